"""The adapter library: trained or imported adapters with what they are for.

Rows point at assets of kind 'adapter'. Jobs that produce an adapter artifact enter it
here automatically (with the job's other images as previews); files can be imported
(kohya, diffusers/PEFT LoRA, Studio SHiRA/FouRA, and peft SHiRA folders as a .zip, which are
converted to the Studio layout) and are validated before anything is stored — against the base
model's layer names and shapes when a base model is named.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from sqlalchemy import select

from storage.db import Database
from storage.models import Adapter, Asset
from studio.assets import AssetService, new_id, visible
from studio.auth import viewer
from studio.errors import Conflict, NotFound, UploadRejected

METHOD_OF_FORMAT = {"kohya": "lora", "diffusers": "lora", "peft": "lora", "studio-shira": "shira",
                    "studio-foura": "foura"}


def _dto(a: Adapter) -> dict[str, Any]:
    return {"id": a.id, "name": a.name, "method": a.method, "format": a.file_format, "asset_id": a.asset_id,
            "url": f"/api/v1/assets/{a.asset_id}", "base_model": a.base_model, "base_model_hash": a.base_model_hash,
            "targets": a.targets, "rank": a.rank, "density": a.density, "trigger": a.trigger,
            "provenance": a.provenance, "previews": a.preview_asset_ids,
            "created_at": a.created_at.isoformat() + "Z" if a.created_at else None}


def asset_owner(asset_id: str, s: Any) -> str | None:
    row = s.get(Asset, asset_id)
    return row.owner_id if row is not None else None


class AdapterLibrary:
    def __init__(self, db: Database, assets: AssetService, resolve_model: Callable[[str], Any] | None = None) -> None:
        self.db = db
        self.assets = assets
        self.resolve_model = resolve_model  # ref -> ModelSpec (the model manager's resolver)

    def _base_shapes(self, base_model: str) -> dict[str, tuple[int, ...]] | None:
        """The base U-Net's layer shapes, or None when the model's layout cannot be read cheaply
        (a single-file checkpoint uses original-SD names)."""
        from engines.adapters.compat import unet_weight_shapes
        from engines.base import ModelNotFound

        if self.resolve_model is None:
            return None
        try:
            spec = self.resolve_model(base_model)
        except ModelNotFound as e:
            raise UploadRejected(f"base_model: {e}", 400) from None
        if spec.kind == "single_file" or not (spec.path / "unet").is_dir():
            return None
        try:
            return unet_weight_shapes(spec.path)
        except ValueError:
            return None

    def list(self, method: str | None = None) -> list[dict[str, Any]]:
        stmt = visible(select(Adapter).order_by(Adapter.created_at.desc()), Adapter)
        if method:
            stmt = stmt.where(Adapter.method == method)
        with self.db.session() as s:
            return [_dto(a) for a in s.scalars(stmt)]

    def get(self, ref: str) -> dict[str, Any]:
        with self.db.session() as s:
            return _dto(self._visible(s, ref))

    @staticmethod
    def _visible(s: Any, ref: str) -> Adapter:
        ref = str(ref)[:120]
        a = s.get(Adapter, ref) or s.scalar(select(Adapter).where(Adapter.name == ref))
        if a is None or not viewer().owns(a.owner_id):
            raise NotFound(f"no adapter {ref!r}")
        return a

    def add_from_job(self, sess: Any, asset: Asset, job_id: str, previews: list[str]) -> None:
        """Called inside the job-completion transaction for each 'adapter' artifact."""
        m = dict(asset.meta or {})
        name = self._unique_name(sess, str(m.get("name") or Path(asset.filename).stem))
        fmt = m.get("format", "")
        sess.add(Adapter(id=new_id(), name=name, method=m.get("method") or METHOD_OF_FORMAT.get(fmt, "lora"),
                         file_format=fmt or "unknown", asset_id=asset.id, base_model=str(m.get("base_model", "")),
                         base_model_hash=str(m.get("base_model_hash", "")), targets=list(m.get("targets") or []),
                         rank=m.get("rank"), density=m.get("density"), trigger=str(m.get("trigger") or ""),
                         # an engine's own provenance (e.g. personalize: subject/class words, hollow) first;
                         # the job's facts win on a clash
                         provenance=dict(m.get("provenance") or {}) | {
                             "job_id": job_id, "steps": m.get("steps"), "learning_rate": m.get("learning_rate"),
                             "images": m.get("images"), "seed": m.get("seed"), "final_loss": m.get("final_loss")},
                         preview_asset_ids=previews, owner_id=asset.owner_id))

    def import_file(self, stream: BinaryIO, filename: str, *, name: str = "", trigger: str = "",
                    base_model: str = "") -> dict[str, Any]:
        """Validate an adapter file and add it; a bad file stores nothing.

        ``.safetensors``: kohya / diffusers / PEFT LoRA or Studio SHiRA / FouRA. ``.zip``: a peft
        SHiRA ``save_pretrained`` folder, converted to a Studio SHiRA file (needs ``base_model``:
        peft stores only the values, the indices are rebuilt from the base layer shapes).
        With ``base_model`` every adapted U-Net layer must exist in it with a fitting shape.
        """
        lower = filename.lower()
        if not lower.endswith((".safetensors", ".zip")):
            raise UploadRejected("adapters must be .safetensors files (or a .zip of a peft SHiRA adapter)", 400)
        is_zip = lower.endswith(".zip")
        with tempfile.NamedTemporaryFile(dir=self.assets.files.tmp, suffix=".zip" if is_zip else ".safetensors",
                                         delete=False) as tmp:
            tmp_path = Path(tmp.name)
            total = 0
            while chunk := stream.read(1 << 20):
                total += len(chunk)
                if total > self.assets.settings.max_upload_bytes:
                    tmp.close()
                    tmp_path.unlink(missing_ok=True)
                    raise UploadRejected("adapter file exceeds the upload limit", 413)
                tmp.write(chunk)
        user_name = Path(filename).name[:120] or "adapter"
        try:
            return self._import(tmp_path, filename, name, trigger, base_model)
        except UploadRejected as e:  # name the user's file, never our temp file
            msg = str(e)
            for p in (str(tmp_path), str(tmp_path.with_suffix(".shira.safetensors")), tmp_path.name):
                msg = msg.replace(p, user_name)
            raise UploadRejected(msg, e.status_code) from None
        finally:
            tmp_path.unlink(missing_ok=True)
            tmp_path.with_suffix(".shira.safetensors").unlink(missing_ok=True)

    def _import(self, tmp_path: Path, filename: str, name: str, trigger: str, base_model: str) -> dict[str, Any]:
        from engines.adapters.compat import check_adapter, peft_shira_to_studio, read_peft_folder
        from engines.adapters.lora_io import detect_format, read_header

        is_zip = filename.lower().endswith(".zip")
        converted: Path | None = None
        try:
            shapes = self._base_shapes(base_model) if base_model else None
            if is_zip:
                from studio.uploads import sniff

                sniff(tmp_path, filename, max_image_pixels=1, max_archive_bytes=self.assets.settings.max_upload_bytes)
                if shapes is None:
                    raise UploadRejected("a peft SHiRA adapter needs base_model (a diffusers folder or registered "
                                         "model) to rebuild its indices", 400)
                try:
                    cfg, tensors = read_peft_folder(tmp_path)
                    adapter = peft_shira_to_studio(cfg, tensors, shapes)
                except (ValueError, KeyError) as e:
                    raise UploadRejected(f"peft SHiRA adapter: {e}", 400) from None
                converted = tmp_path.with_suffix(".shira.safetensors")
                adapter.meta |= {"base_model": base_model}
                adapter.save(converted)
                filename = Path(filename).stem + ".shira.safetensors"
                tmp_path.unlink(missing_ok=True)
                tmp_path = converted
            try:
                keys, meta = read_header(tmp_path)
                fmt = detect_format(keys, meta)
                checked = check_adapter(tmp_path, fmt, shapes) if shapes is not None else None
            except ValueError as e:
                raise UploadRejected(str(e), 400) from None
            studio_meta = {}
            if meta.get("studio", "").startswith("{"):
                studio_meta = json.loads(meta["studio"])
            stem = Path(filename).name
            for suffix in (".safetensors", ".shira", ".foura"):
                stem = stem.removesuffix(suffix)
            label = name.strip() or studio_meta.get("name") or stem
            with self.db.session() as s:
                if s.scalar(select(Adapter).where(Adapter.name == label)) is not None:
                    raise Conflict(f"an adapter named {label!r} already exists")
            asset = self.assets.ingest_path(tmp_path, filename=Path(filename).name, kind="adapter",
                                            mime="application/octet-stream",
                                            meta={"name": label, "format": fmt, "imported": True})
            with self.db.session() as s:
                row = Adapter(id=new_id(), name=label, method=METHOD_OF_FORMAT[fmt], file_format=fmt,
                              asset_id=asset.id, base_model=base_model or studio_meta.get("base_model", ""),
                              base_model_hash=studio_meta.get("base_model_hash", ""),
                              targets=list(studio_meta.get("targets") or []), rank=studio_meta.get("rank"),
                              density=studio_meta.get("density"), trigger=trigger or studio_meta.get("trigger", ""),
                              provenance={"imported_from": Path(filename).name, "keys": len(keys),
                                          "layers_checked": checked,
                                          "converted_from": "peft-shira" if converted else None},
                              preview_asset_ids=[], owner_id=asset_owner(asset.id, s))
                s.add(row)
            return self.get(row.id)
        finally:
            tmp_path.unlink(missing_ok=True)

    def remove(self, ref: str) -> None:
        with self.db.session() as s:
            s.delete(self._visible(s, ref))

    @staticmethod
    def _unique_name(sess: Any, base: str) -> str:
        name, k = base[:110] or "adapter", 2
        while sess.scalar(select(Adapter).where(Adapter.name == name)) is not None:
            name = f"{base[:100]}-{k}"
            k += 1
        return name
