// In-browser 3DGS viewer (WebGL2): sorted alpha blending (depth sort in a web worker) and
// sort-free weighted-sum rendering (additive float accumulation + resolve pass).
// Projection, extents and blending follow engines/splat/render.py so a frame matches the
// server's reference render of the same camera. Colours: spherical harmonics up to degree 3.
"use strict";

const SH_C0 = 0.28209479177387814;
const SH_C1 = 0.4886025119029199;
const TEX_W = 2048;
const UP_AXES = { "y": [0, 1, 0], "-y": [0, -1, 0], "z": [0, 0, 1], "-z": [0, 0, -1] };

// ---------------------------------------------------------------- file parsing

const PLY_TYPES = {
  char: ["getInt8", 1], int8: ["getInt8", 1], uchar: ["getUint8", 1], uint8: ["getUint8", 1],
  short: ["getInt16", 2], int16: ["getInt16", 2], ushort: ["getUint16", 2], uint16: ["getUint16", 2],
  int: ["getInt32", 4], int32: ["getInt32", 4], uint: ["getUint32", 4], uint32: ["getUint32", 4],
  float: ["getFloat32", 4], float32: ["getFloat32", 4], double: ["getFloat64", 8], float64: ["getFloat64", 8],
};

function parsePly(buf) {
  const bytes = new Uint8Array(buf);
  const head = new TextDecoder("ascii").decode(bytes.subarray(0, Math.min(bytes.length, 65536)));
  const end = head.indexOf("end_header");
  if (!head.startsWith("ply") || end < 0) throw new Error("not a PLY file");
  const nl = head.indexOf("\n", end);
  const lines = head.slice(0, end).split(/\r?\n/);
  let format = "", elements = [], meta = {};
  for (const line of lines.slice(1)) {
    const p = line.trim().split(/\s+/);
    if (p[0] === "format") format = p[1];
    else if (p[0] === "comment") {
      const m = line.match(/studio\.(\w+)\s*=\s*(\S+)/);
      if (m) meta[m[1]] = isNaN(Number(m[2])) ? m[2] : Number(m[2]);
    } else if (p[0] === "element") elements.push({ name: p[1], count: parseInt(p[2], 10), props: [] });
    else if (p[0] === "property") {
      if (p[1] === "list") throw new Error("PLY has list properties (a mesh, not a splat scene)");
      elements[elements.length - 1].props.push({ name: p[2], type: p[1] });
    }
  }
  if (format !== "binary_little_endian" && format !== "binary_big_endian") throw new Error("unsupported PLY format " + format);
  if (elements.some((e) => e.name === "chunk")) throw new Error("compressed PLY is not supported in the browser viewer");
  const little = format === "binary_little_endian";
  const dv = new DataView(buf);
  let off = nl + 1;
  for (const el of elements) {
    let stride = 0;
    const offs = {};
    for (const pr of el.props) {
      const t = PLY_TYPES[pr.type];
      if (!t) throw new Error("bad PLY type " + pr.type);
      offs[pr.name] = [stride, t[0]];
      stride += t[1];
    }
    if (el.name !== "vertex") { off += stride * el.count; continue; }
    if (off + stride * el.count > buf.byteLength) throw new Error("PLY data is truncated");
    const need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
      "rot_0", "rot_1", "rot_2", "rot_3"];
    for (const k of need) if (!(k in offs)) throw new Error("PLY lacks Gaussian property " + k);
    const n = el.count;
    const get = (name, i) => { const [o, f] = offs[name]; return dv[f](off + i * stride + o, little); };
    const s = emptyScene(n, "vdo_3" in offs);
    let nRest = 0;
    while (("f_rest_" + nRest) in offs) nRest++;
    const restK = { 0: 0, 9: 3, 24: 8, 45: 15 }[nRest];
    if (restK === undefined) throw new Error("PLY has " + nRest + " f_rest_* properties (expected 0, 9, 24 or 45)");
    s.shK = restK;  // non-DC coefficients per channel
    s.sh = restK ? new Float32Array(n * 48) : null;  // 16 vec3 slots per splat (12 RGBA texels)
    for (let i = 0; i < n; i++) {
      s.pos[3 * i] = get("x", i); s.pos[3 * i + 1] = get("y", i); s.pos[3 * i + 2] = get("z", i);
      for (let c = 0; c < 3; c++) {
        s.color[4 * i + c] = 0.5 + SH_C0 * get("f_dc_" + c, i);  // clamped after the SH terms
        s.scale[3 * i + c] = Math.exp(get("scale_" + c, i));
      }
      s.color[4 * i + 3] = 1 / (1 + Math.exp(-get("opacity", i)));
      setRot(s.rot, i, get("rot_0", i), get("rot_1", i), get("rot_2", i), get("rot_3", i));
      if (s.vdo) for (let k = 0; k < 4; k++) s.vdo[4 * i + k] = get("vdo_" + k, i);
      // f_rest is channel-major: f_rest_{c*K + j}; stored as [j][c]
      for (let j = 0; j < restK; j++) for (let c = 0; c < 3; c++) s.sh[48 * i + 3 * j + c] = get("f_rest_" + (c * restK + j), i);
    }
    s.meta = meta;
    return s;
  }
  throw new Error("PLY has no vertex element");
}

function parseSplat(buf) {
  if (buf.byteLength === 0 || buf.byteLength % 32) throw new Error(".splat size is not a multiple of 32");
  const n = buf.byteLength / 32;
  const f = new Float32Array(buf);
  const u = new Uint8Array(buf);
  const s = emptyScene(n, false);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      s.pos[3 * i + c] = f[8 * i + c];
      s.scale[3 * i + c] = f[8 * i + 3 + c];
      s.color[4 * i + c] = u[32 * i + 24 + c] / 255;
    }
    const a = Math.min(Math.max(u[32 * i + 27] / 255, 1e-4), 1 - 1e-4);
    s.color[4 * i + 3] = a;
    const q = [0, 1, 2, 3].map((k) => (u[32 * i + 28 + k] - 128) / 128);
    setRot(s.rot, i, q[0], q[1], q[2], q[3]);
  }
  s.meta = {};
  return s;
}

function emptyScene(n, vdo) {
  return { n, pos: new Float32Array(3 * n), scale: new Float32Array(3 * n), rot: new Float32Array(4 * n),
    color: new Float32Array(4 * n), vdo: vdo ? new Float32Array(4 * n) : null, meta: {}, sh: null, shK: 0 };
}

function setRot(rot, i, w, x, y, z) {
  const l = Math.hypot(w, x, y, z) || 1;
  rot[4 * i] = w / l; rot[4 * i + 1] = x / l; rot[4 * i + 2] = y / l; rot[4 * i + 3] = z / l;
}

// ---------------------------------------------------------------- camera (= render.orbit_camera)

function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
function norm(a) { const l = Math.hypot(a[0], a[1], a[2]); return [a[0] / l, a[1] / l, a[2] / l]; }

function orbitCamera(cam) {
  const u = UP_AXES[cam.up];
  let a = Math.abs(u[0]) < 0.9 ? [1, 0, 0] : [0, 0, 1];
  const au = a[0] * u[0] + a[1] * u[1] + a[2] * u[2];
  a = norm([a[0] - u[0] * au, a[1] - u[1] * au, a[2] - u[2] * au]);
  const b = cross(u, a);
  const az = cam.az * Math.PI / 180, el = cam.el * Math.PI / 180;
  const d = [0, 1, 2].map((k) => Math.cos(el) * (Math.cos(az) * a[k] + Math.sin(az) * b[k]) + Math.sin(el) * u[k]);
  const eye = [0, 1, 2].map((k) => cam.target[k] + cam.radius * d[k]);
  const fwd = norm([0, 1, 2].map((k) => cam.target[k] - eye[k]));
  let right = cross(fwd, u);
  if (Math.hypot(...right) < 1e-6) right = cross(fwd, [1, 0, 0]);
  right = norm(right);
  const down = cross(fwd, right);
  const R = [right, down, fwd];  // rows
  const t = R.map((r) => -(r[0] * eye[0] + r[1] * eye[1] + r[2] * eye[2]));
  const f = 0.5 * cam.width / Math.tan(cam.fov * Math.PI / 360);
  return { R, t, eye, fx: f, fy: f, cx: cam.width / 2, cy: cam.height / 2 };
}

function percentile(sorted, q) {
  const pos = (sorted.length - 1) * q, lo = Math.floor(pos), hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

function sceneBounds(s) {
  const lo = [], hi = [];
  for (let c = 0; c < 3; c++) {
    const v = new Float32Array(s.n);
    for (let i = 0; i < s.n; i++) v[i] = s.pos[3 * i + c];
    v.sort();
    lo.push(percentile(v, 0.01)); hi.push(percentile(v, 0.99));
  }
  return { lo, hi };
}

// ---------------------------------------------------------------- GL

const VS = `#version 300 es
precision highp float; precision highp int; precision highp sampler2D;
in vec2 corner;
in uint splatIndex;
uniform sampler2D uPos, uCovA, uCovB, uColor, uVdo, uPlane, uSh;
uniform int uShK;
uniform mat3 uR; uniform vec3 uT; uniform vec3 uEye;
uniform vec2 uFocal, uPrincipal, uSize;
uniform int uMode, uVariant, uHasVdo, uUsePlanes;
uniform float uSigma;
flat out vec4 vColor; flat out vec3 vConic; flat out vec2 vCenter; flat out float vWeight;
void main() {
  gl_Position = vec4(2.0, 2.0, 2.0, 1.0);
  ivec2 tc = ivec2(int(splatIndex % ${TEX_W}u), int(splatIndex / ${TEX_W}u));
  vec4 p4 = texelFetch(uPos, tc, 0);
  vec4 ca = texelFetch(uCovA, tc, 0);
  vec4 cb = texelFetch(uCovB, tc, 0);
  vec3 pc = uR * p4.xyz + uT;
  float z = pc.z;
  vec2 tanl = 0.5 * uSize / uFocal;
  if (z <= 0.01) return;
  if (abs(pc.x) > 1.3 * tanl.x * z + 3.0 * cb.z || abs(pc.y) > 1.3 * tanl.y * z + 3.0 * cb.z) return;
  float o = p4.w;
  if (o * 255.0 <= 1.0) return;
  float x = clamp(pc.x / z, -1.3 * tanl.x, 1.3 * tanl.x) * z;
  float y = clamp(pc.y / z, -1.3 * tanl.y, 1.3 * tanl.y) * z;
  vec3 r0 = vec3(uR[0][0], uR[1][0], uR[2][0]);
  vec3 r1 = vec3(uR[0][1], uR[1][1], uR[2][1]);
  vec3 r2 = vec3(uR[0][2], uR[1][2], uR[2][2]);
  vec3 T0 = (uFocal.x / z) * r0 - (uFocal.x * x / (z * z)) * r2;
  vec3 T1 = (uFocal.y / z) * r1 - (uFocal.y * y / (z * z)) * r2;
  mat3 S = mat3(ca.x, ca.y, ca.z, ca.y, ca.w, cb.x, ca.z, cb.x, cb.y);
  float a = dot(T0, S * T0) + 0.3;
  float b = dot(T0, S * T1);
  float c = dot(T1, S * T1) + 0.3;
  float det = max(a * c - b * b, 1e-12);
  float k = sqrt(max(2.0 * log(255.0 * o), 0.0));  // = render.project: exact 1/255 footprint
  vec2 rad = ceil(k * sqrt(vec2(a, c)));
  vec2 m = vec2(uFocal.x * pc.x / z + uPrincipal.x, uFocal.y * pc.y / z + uPrincipal.y);
  if (m.x + rad.x <= 0.0 || m.x - rad.x >= uSize.x || m.y + rad.y <= 0.0 || m.y - rad.y >= uSize.y) return;
  float w = 1.0;
  if (uMode == 1) {
    if (uVariant == 1) w = exp(-z / uSigma);
    else if (uVariant == 2) w = max(0.0, 1.0 - z / uSigma);
    if (uHasVdo == 1) {
      vec3 d = normalize(p4.xyz - uEye);
      vec4 v = texelFetch(uVdo, tc, 0);
      w *= max(0.0, ${SH_C0} * v.x - ${SH_C1} * d.y * v.y + ${SH_C1} * d.z * v.z - ${SH_C1} * d.x * v.w);
    }
    if (w <= 0.0) return;
  }
  vec3 rgb = texelFetch(uColor, tc, 0).rgb;
  if (uShK > 0 && uUsePlanes == 0) {
    // = render.eval_sh: view direction from the camera centre to the splat, world space
    float sh[48];
    int base = int(splatIndex) * 12;
    for (int t = 0; t < 12; t++) {
      vec4 v = texelFetch(uSh, ivec2((base + t) % ${TEX_W}, (base + t) / ${TEX_W}), 0);
      sh[4 * t] = v.x; sh[4 * t + 1] = v.y; sh[4 * t + 2] = v.z; sh[4 * t + 3] = v.w;
    }
    #define C(j) vec3(sh[3 * (j)], sh[3 * (j) + 1], sh[3 * (j) + 2])
    vec3 d = normalize(p4.xyz - uEye);
    float x = d.x, y = d.y, z = d.z;
    rgb += ${SH_C1} * (-y * C(0) + z * C(1) - x * C(2));
    if (uShK > 3) {
      float xx = x * x, yy = y * y, zz = z * z;
      rgb += 1.0925484305920792 * x * y * C(3) - 1.0925484305920792 * y * z * C(4)
           + 0.31539156525252005 * (2.0 * zz - xx - yy) * C(5) - 1.0925484305920792 * x * z * C(6)
           + 0.5462742152960396 * (xx - yy) * C(7);
      if (uShK > 8) {
        rgb += -0.5900435899266435 * y * (3.0 * xx - yy) * C(8) + 2.890611442640554 * x * y * z * C(9)
             - 0.4570457994644658 * y * (4.0 * zz - xx - yy) * C(10)
             + 0.3731763325901154 * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * C(11)
             - 0.4570457994644658 * x * (4.0 * zz - xx - yy) * C(12) + 1.445305721320277 * z * (xx - yy) * C(13)
             - 0.5900435899266435 * x * (xx - 3.0 * yy) * C(14);
      }
    }
  }
  vColor = vec4(uUsePlanes == 1 ? texelFetch(uPlane, tc, 0).rgb : max(rgb, 0.0), o);
  vConic = vec3(c, -b, a) / det;
  vCenter = m;
  vWeight = w;
  vec2 pix = m + corner * (rad + 1.0);
  gl_Position = vec4(pix.x / uSize.x * 2.0 - 1.0, 1.0 - pix.y / uSize.y * 2.0, 0.0, 1.0);
}`;

const FS = `#version 300 es
precision highp float; precision highp int;
flat in vec4 vColor; flat in vec3 vConic; flat in vec2 vCenter; flat in float vWeight;
uniform vec2 uSize; uniform int uMode;
out vec4 frag;
void main() {
  vec2 d = vec2(gl_FragCoord.x, uSize.y - gl_FragCoord.y) - vCenter;
  float power = -0.5 * (vConic.x * d.x * d.x + vConic.z * d.y * d.y) - vConic.y * d.x * d.y;
  float alpha = min(0.99, vColor.a * exp(power));
  if (alpha < 1.0 / 255.0) discard;
  frag = uMode == 0 ? vec4(vColor.rgb * alpha, alpha) : vec4(vColor.rgb * alpha * vWeight, alpha * vWeight);
}`;

const RESOLVE_VS = `#version 300 es
void main() { vec2 p = vec2(float((gl_VertexID << 1) & 2), float(gl_VertexID & 2)); gl_Position = vec4(p * 2.0 - 1.0, 0.0, 1.0); }`;
const RESOLVE_FS = `#version 300 es
precision highp float; precision highp int;
uniform sampler2D uAcc; uniform float uBgWeight; uniform vec3 uBg;
out vec4 frag;
void main() {
  vec4 acc = texelFetch(uAcc, ivec2(gl_FragCoord.xy), 0);
  frag = vec4((uBgWeight * uBg + acc.rgb) / (uBgWeight + acc.a), 1.0);
}`;

function compile(gl, vs, fs) {
  const p = gl.createProgram();
  for (const [type, src] of [[gl.VERTEX_SHADER, vs], [gl.FRAGMENT_SHADER, fs]]) {
    const s = gl.createShader(type);
    gl.shaderSource(s, src);
    gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    gl.attachShader(p, s);
  }
  gl.linkProgram(p);
  if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p));
  return p;
}

function floatTexture(gl, data, n) {
  const h = Math.max(1, Math.ceil(n / TEX_W));
  const full = new Float32Array(TEX_W * h * 4);
  full.set(data);
  const t = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_2D, t);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA32F, TEX_W, h, 0, gl.RGBA, gl.FLOAT, full);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
  return t;
}

function palette(k) {  // = engines.splat.planes.palette (golden-angle hues, s=0.75, v=0.95)
  const out = [];
  for (let i = 0; i < k; i++) {
    const h = (i * 0.618033988749895) % 1, s = 0.75, v = 0.95;
    const j = Math.floor(h * 6), f = h * 6 - j, p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    out.push([[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][j % 6]);
  }
  return out;
}

// ---------------------------------------------------------------- viewer

class Viewer {
  constructor(canvas, scene, opts) {
    this.canvas = canvas;
    this.scene = scene;
    this.opts = opts;
    const gl = canvas.getContext("webgl2", { antialias: false, preserveDrawingBuffer: true, premultipliedAlpha: false });
    if (!gl) throw new Error("WebGL2 is not available");
    this.gl = gl;
    this.floatTargets = !!gl.getExtension("EXT_color_buffer_float");
    gl.getExtension("EXT_float_blend");
    this.prog = compile(gl, VS, FS);
    this.resolve = compile(gl, RESOLVE_VS, RESOLVE_FS);
    this.frames = 0;
    this.upload();
    this.sortId = 0;
    this.sortedFor = -1;
    this.worker = new Worker(new URL("sort-worker.js", import.meta.url));
    this.worker.onmessage = (ev) => this.onSorted(ev.data);
    this.worker.postMessage({ positions: scene.pos.slice() });
    this.dirty = true;
  }

  upload() {
    const gl = this.gl, s = this.scene, n = s.n;
    const pos = new Float32Array(4 * n), ca = new Float32Array(4 * n), cb = new Float32Array(4 * n);
    for (let i = 0; i < n; i++) {
      pos[4 * i] = s.pos[3 * i]; pos[4 * i + 1] = s.pos[3 * i + 1]; pos[4 * i + 2] = s.pos[3 * i + 2];
      pos[4 * i + 3] = s.color[4 * i + 3];
      const [w, x, y, z] = [s.rot[4 * i], s.rot[4 * i + 1], s.rot[4 * i + 2], s.rot[4 * i + 3]];
      const R = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)];
      const sc = [s.scale[3 * i], s.scale[3 * i + 1], s.scale[3 * i + 2]];
      const M = R.map((v, k) => v * sc[k % 3]);  // R * diag(s)
      const cov = (r, c) => M[3 * r] * M[3 * c] + M[3 * r + 1] * M[3 * c + 1] + M[3 * r + 2] * M[3 * c + 2];
      ca[4 * i] = cov(0, 0); ca[4 * i + 1] = cov(0, 1); ca[4 * i + 2] = cov(0, 2); ca[4 * i + 3] = cov(1, 1);
      cb[4 * i] = cov(1, 2); cb[4 * i + 1] = cov(2, 2); cb[4 * i + 2] = Math.max(...sc);
    }
    this.tex = {
      uPos: floatTexture(gl, pos, n), uCovA: floatTexture(gl, ca, n), uCovB: floatTexture(gl, cb, n),
      uColor: floatTexture(gl, s.color, n), uVdo: floatTexture(gl, s.vdo || new Float32Array(4), s.vdo ? n : 1),
      uPlane: floatTexture(gl, this.planeColors(), n),
      uSh: floatTexture(gl, s.sh || new Float32Array(4), s.sh ? 12 * n : 1),
    };
    this.vao = gl.createVertexArray();
    gl.bindVertexArray(this.vao);
    const quad = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, quad);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    const lc = gl.getAttribLocation(this.prog, "corner");
    gl.enableVertexAttribArray(lc);
    gl.vertexAttribPointer(lc, 2, gl.FLOAT, false, 0, 0);
    this.indexBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.indexBuf);
    const ident = new Uint32Array(n);
    for (let i = 0; i < n; i++) ident[i] = i;
    gl.bufferData(gl.ARRAY_BUFFER, ident, gl.DYNAMIC_DRAW);
    const li = gl.getAttribLocation(this.prog, "splatIndex");
    gl.enableVertexAttribArray(li);
    gl.vertexAttribIPointer(li, 1, gl.UNSIGNED_INT, 0, 0);
    gl.vertexAttribDivisor(li, 1);
    gl.bindVertexArray(null);
    this.resolveVao = gl.createVertexArray();
  }

  planeColors() {
    const n = this.scene.n, out = new Float32Array(4 * n).fill(0.25);
    const labels = this.opts.labels;
    if (labels && labels.length === n) {
      let top = 0;
      for (let i = 0; i < n; i++) if (labels[i] > top) top = labels[i];  // no spread: n can be 1e6
      const pal = palette(top + 1);
      for (let i = 0; i < n; i++) if (labels[i] >= 0) out.set(pal[labels[i]], 4 * i);
    }
    return out;
  }

  camera() { return orbitCamera(this.opts.cam); }

  requestSort(cam) {
    const id = ++this.sortId;
    this.pendingSort = id;
    this.sortCam = cam;
    this.worker.postMessage({ view: [cam.R[2][0], cam.R[2][1], cam.R[2][2], cam.t[2]], id });
  }

  onSorted(msg) {
    if (msg.id !== this.sortId) return;  // stale
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.indexBuf);
    gl.bufferSubData(gl.ARRAY_BUFFER, 0, msg.order);
    this.sortedFor = msg.id;
    this.sortMs = msg.ms;
    this.dirty = true;
  }

  ensureAccum(w, h) {
    const gl = this.gl;
    if (this.acc && this.acc.w === w && this.acc.h === h) return;
    const tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, tex);
    gl.texImage2D(gl.TEXTURE_2D, 0, this.floatTargets ? gl.RGBA32F : gl.RGBA16F, w, h, 0, gl.RGBA,
      this.floatTargets ? gl.FLOAT : gl.HALF_FLOAT, null);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
    const fb = gl.createFramebuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, fb);
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, tex, 0);
    if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) throw new Error("float render target unsupported");
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    this.acc = { tex, fb, w, h };
  }

  wsrSigma(cam) {
    if (typeof this.scene.meta.wsr_sigma === "number") return this.scene.meta.wsr_sigma;
    // as render.wsr_weights: twice the farthest visible depth (approximated by all splats in front)
    let far = 0;
    const p = this.scene.pos, r = cam.R[2];
    for (let i = 0; i < this.scene.n; i++) far = Math.max(far, r[0] * p[3 * i] + r[1] * p[3 * i + 1] + r[2] * p[3 * i + 2] + cam.t[2]);
    return 2 * far + 1e-6;
  }

  draw() {
    const gl = this.gl, o = this.opts, cam = this.camera();
    const W = o.cam.width, H = o.cam.height;
    const bg = o.bg === "white" ? [1, 1, 1] : [0, 0, 0];
    const wsr = o.mode === "wsr";
    if (!wsr) {
      const key = JSON.stringify(cam.R) + cam.t.join(",");
      if (this.sortKey !== key) { this.sortKey = key; this.requestSort(cam); }
      if (this.sortedFor !== this.sortId) return false;  // wait for the worker
    }
    if (wsr) this.ensureAccum(W, H);  // before binding splat textures: creation binds a unit
    gl.useProgram(this.prog);
    let unit = 0;
    for (const [name, t] of Object.entries(this.tex)) {
      gl.activeTexture(gl.TEXTURE0 + unit);
      gl.bindTexture(gl.TEXTURE_2D, t);
      gl.uniform1i(gl.getUniformLocation(this.prog, name), unit++);
    }
    const Rcols = new Float32Array([0, 1, 2].flatMap((c) => [cam.R[0][c], cam.R[1][c], cam.R[2][c]]));
    gl.uniformMatrix3fv(gl.getUniformLocation(this.prog, "uR"), false, Rcols);
    gl.uniform3fv(gl.getUniformLocation(this.prog, "uT"), cam.t);
    gl.uniform3fv(gl.getUniformLocation(this.prog, "uEye"), cam.eye);
    gl.uniform2f(gl.getUniformLocation(this.prog, "uFocal"), cam.fx, cam.fy);
    gl.uniform2f(gl.getUniformLocation(this.prog, "uPrincipal"), cam.cx, cam.cy);
    gl.uniform2f(gl.getUniformLocation(this.prog, "uSize"), W, H);
    gl.uniform1i(gl.getUniformLocation(this.prog, "uMode"), wsr ? 1 : 0);
    const variant = o.variant === "auto" ? (this.scene.meta.wsr_variant || "lc") : o.variant;
    gl.uniform1i(gl.getUniformLocation(this.prog, "uVariant"), { dir: 0, exp: 1, lc: 2 }[variant] ?? 2);
    gl.uniform1f(gl.getUniformLocation(this.prog, "uSigma"), wsr ? this.wsrSigma(cam) : 1);
    gl.uniform1i(gl.getUniformLocation(this.prog, "uHasVdo"), this.scene.vdo ? 1 : 0);
    gl.uniform1i(gl.getUniformLocation(this.prog, "uShK"), this.scene.shK || 0);
    gl.uniform1i(gl.getUniformLocation(this.prog, "uUsePlanes"), o.planes && o.labels ? 1 : 0);
    gl.enable(gl.BLEND);
    gl.disable(gl.DEPTH_TEST);
    gl.bindVertexArray(this.vao);
    if (wsr) {
      // order-independent accumulation of (c*a*w, a*w) in a float target, then resolve
      gl.bindFramebuffer(gl.FRAMEBUFFER, this.acc.fb);
      gl.viewport(0, 0, W, H);
      gl.clearColor(0, 0, 0, 0);
      gl.clear(gl.COLOR_BUFFER_BIT);
      gl.blendFunc(gl.ONE, gl.ONE);
      gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, this.scene.n);
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      gl.disable(gl.BLEND);
      gl.useProgram(this.resolve);
      gl.bindVertexArray(this.resolveVao);
      gl.activeTexture(gl.TEXTURE0);
      gl.bindTexture(gl.TEXTURE_2D, this.acc.tex);
      gl.uniform1i(gl.getUniformLocation(this.resolve, "uAcc"), 0);
      const wB = typeof this.scene.meta.wsr_bg_weight === "number" ? this.scene.meta.wsr_bg_weight : 0.02;
      gl.uniform1f(gl.getUniformLocation(this.resolve, "uBgWeight"), wB);
      gl.uniform3fv(gl.getUniformLocation(this.resolve, "uBg"), bg);
      gl.viewport(0, 0, W, H);
      gl.drawArrays(gl.TRIANGLES, 0, 3);
    } else {
      gl.viewport(0, 0, W, H);
      gl.clearColor(bg[0], bg[1], bg[2], 1);
      gl.clear(gl.COLOR_BUFFER_BIT);
      gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);  // premultiplied "over", back to front
      gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, this.scene.n);
    }
    gl.bindVertexArray(null);
    return true;
  }
}

function labelsFromPlanes(scene, planes) {
  // nearest plane within 1% of the scene diagonal and inside its extent (normals are not checked)
  const b = sceneBounds(scene);
  const tol = 0.01 * Math.hypot(...[0, 1, 2].map((k) => b.hi[k] - b.lo[k]));
  const out = new Int32Array(scene.n).fill(-1);
  const dot = (a, p, i) => a[0] * p[3 * i] + a[1] * p[3 * i + 1] + a[2] * p[3 * i + 2];
  for (let i = 0; i < scene.n; i++) {
    let best = tol;
    planes.forEach((pl, k) => {
      const d = Math.abs(dot(pl.normal, scene.pos, i) - pl.offset);
      if (d >= best) return;
      if (pl.center && pl.u && pl.v && pl.extent) {
        const lu = dot(pl.u, scene.pos, i) - (pl.u[0] * pl.center[0] + pl.u[1] * pl.center[1] + pl.u[2] * pl.center[2]);
        const lv = dot(pl.v, scene.pos, i) - (pl.v[0] * pl.center[0] + pl.v[1] * pl.center[1] + pl.v[2] * pl.center[2]);
        if (Math.abs(lu) > pl.extent[0] / 2 + tol || Math.abs(lv) > pl.extent[1] / 2 + tol) return;
      }
      best = d;
      out[i] = k;
    });
  }
  return out;
}

// ---------------------------------------------------------------- page glue

function num(q, k, d) { const v = q.get(k); return v === null || v === "" ? d : Number(v); }

async function main() {
  const q = new URLSearchParams(location.search);
  const status = document.getElementById("status");
  const state = { ready: false, frames: 0, fps: 0, error: null, mode: q.get("mode") || "alpha" };
  window.__splat = state;
  try {
    const url = q.get("url");
    if (!url) throw new Error("no scene: add ?url=scene.ply");
    status.textContent = "loading " + url;
    const buf = await (await fetch(url)).arrayBuffer();
    const isPly = new TextDecoder("ascii").decode(new Uint8Array(buf, 0, Math.min(3, buf.byteLength))) === "ply";
    const scene = isPly ? parsePly(buf) : parseSplat(buf);
    let labels = null;
    if (q.get("planes")) {
      const doc = await (await fetch(q.get("planes"))).json();
      // plane_labels.json (an id per splat) or planes.json (plane list: assign splats geometrically)
      labels = Array.isArray(doc) && doc.length && typeof doc[0] === "object" ? labelsFromPlanes(scene, doc) : doc;
    }
    const width = num(q, "w", 640), height = num(q, "h", 480), fov = num(q, "fov", 50);
    const b = sceneBounds(scene);
    const target = q.get("target") ? q.get("target").split(",").map(Number) : [0, 1, 2].map((k) => (b.lo[k] + b.hi[k]) / 2);
    const half = 0.5 * Math.hypot(...[0, 1, 2].map((k) => b.hi[k] - b.lo[k])) || 1;
    const fovMin = Math.min(fov, fov * height / width) * Math.PI / 180;
    let up = q.get("up") || "auto";
    if (up === "auto") up = UP_AXES[scene.meta.up] ? scene.meta.up : "-y";
    const cam = { az: num(q, "az", 30), el: num(q, "el", 20), radius: num(q, "radius", half / Math.sin(fovMin / 2) * 1.05),
      fov, target, up, width, height };
    const canvas = document.getElementById("canvas");
    canvas.width = width; canvas.height = height;
    canvas.style.width = width + "px"; canvas.style.height = height + "px";
    const opts = { cam, mode: state.mode, variant: q.get("variant") || "auto", bg: q.get("bg") || "black",
      planes: q.get("color") === "planes", labels };
    const viewer = new Viewer(canvas, scene, opts);
    state.n = scene.n;
    bindUi(viewer, opts, state);
    const continuous = q.get("fps") === "1";
    let last = performance.now(), count = 0;
    const loop = () => {
      if (continuous) viewer.dirty = true;
      if (viewer.dirty && viewer.draw()) {
        viewer.dirty = false;
        state.frames++;
        count++;
        state.ready = true;
      }
      const now = performance.now();
      if (now - last > 1000) {
        state.fps = count * 1000 / (now - last);
        count = 0; last = now;
        document.getElementById("fps").textContent = state.fps.toFixed(1) + " fps";
      }
      status.textContent = `${scene.n.toLocaleString()} splats · ${opts.mode}` + (viewer.sortMs ? ` · sort ${viewer.sortMs.toFixed(1)} ms` : "");
      requestAnimationFrame(loop);
    };
    requestAnimationFrame(loop);
  } catch (e) {
    state.error = String(e && e.message || e);
    status.textContent = "error: " + state.error;
  }
}

function bindUi(viewer, opts, state) {
  const mode = document.getElementById("mode"), planes = document.getElementById("planes");
  mode.value = opts.mode;
  mode.onchange = () => { opts.mode = state.mode = mode.value; viewer.dirty = true; };
  planes.disabled = !opts.labels;
  planes.checked = opts.planes;
  planes.onchange = () => { opts.planes = planes.checked; viewer.dirty = true; };
  const c = viewer.canvas, cam = opts.cam;
  let drag = null;
  c.addEventListener("contextmenu", (e) => e.preventDefault());
  c.addEventListener("pointerdown", (e) => { drag = { x: e.clientX, y: e.clientY, pan: e.button === 2 || e.shiftKey }; c.setPointerCapture(e.pointerId); });
  c.addEventListener("pointerup", () => { drag = null; });
  c.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    drag.x = e.clientX; drag.y = e.clientY;
    if (drag.pan) {
      const v = orbitCamera(cam), s = cam.radius * 0.002;
      for (let k = 0; k < 3; k++) cam.target[k] -= s * (dx * v.R[0][k] + dy * v.R[1][k]);
    } else {
      cam.az -= dx * 0.4;
      cam.el = Math.max(-89, Math.min(89, cam.el + dy * 0.4));
    }
    viewer.dirty = true;
  });
  c.addEventListener("wheel", (e) => { e.preventDefault(); cam.radius *= Math.exp(e.deltaY * 0.001); viewer.dirty = true; }, { passive: false });
}

export { parsePly, parseSplat, orbitCamera, Viewer };
main();
