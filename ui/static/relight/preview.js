// Relight preview (WebGL2): re-shades a portrait from its image, normal and matte maps and the
// environment's 9 SH coefficients at any yaw without a server round trip, with the same formula
// as engines/relight/shading.py (light adding: I·(1 + s·m·E(n)); re-shade: I·(1 + s·m·(E(n) − 1))).
// Also a lit sphere (the light alone) and a draggable perspective view into a panorama.

const Y0 = 0.282095, Y1 = 0.488603, Y2A = 1.092548, Y2B = 0.315392, Y2C = 0.546274;
const A_HAT = [Math.PI, 2 * Math.PI / 3, 2 * Math.PI / 3, 2 * Math.PI / 3, Math.PI / 4, Math.PI / 4, Math.PI / 4, Math.PI / 4, Math.PI / 4];

const VS = `#version 300 es
in vec2 p; out vec2 uv;
void main() { uv = vec2(p.x * 0.5 + 0.5, 0.5 - p.y * 0.5); gl_Position = vec4(p, 0.0, 1.0); }`;

const SH_GLSL = `
uniform vec3 c[9]; // SH coefficients × Â_l
uniform float yaw;
vec3 irradiance(vec3 n) { // camera-frame normal (x right, y down, z into the scene)
  float x0 = n.x, y = -n.y, z0 = -n.z;
  float cy = cos(-yaw), sy = sin(-yaw);
  float x = cy * x0 + sy * z0, z = -sy * x0 + cy * z0;
  vec3 e = ${Y0} * c[0] + ${Y1} * (y * c[1] + z * c[2] + x * c[3])
         + ${Y2A} * (x * y * c[4] + y * z * c[5] + x * z * c[7])
         + ${Y2B} * (3.0 * z * z - 1.0) * c[6] + ${Y2C} * (x * x - y * y) * c[8];
  return max(e, vec3(0.0));
}
vec3 toLinear(vec3 s) { return mix(s / 12.92, pow((s + 0.055) / 1.055, vec3(2.4)), step(0.04045, s)); }
vec3 toSrgb(vec3 l) { l = clamp(l, 0.0, 1.0); return mix(l * 12.92, 1.055 * pow(l, vec3(1.0 / 2.4)) - 0.055, step(0.0031308, l)); }
`;

const FS_PORTRAIT = `#version 300 es
precision highp float;
in vec2 uv; out vec4 o;
uniform sampler2D img, nrm, mat;
uniform float strength; uniform int mode;
${SH_GLSL}
void main() {
  vec3 lin = toLinear(texture(img, uv).rgb);
  vec3 n = normalize(texture(nrm, uv).rgb * 2.0 - 1.0);
  float a = clamp(texture(mat, uv).r, 0.0, 1.0) * strength;
  vec3 e = irradiance(n);
  vec3 outc = mode == 0 ? lin * (1.0 + a * e) : lin * (1.0 + a * (e - 1.0));
  o = vec4(toSrgb(outc), 1.0);
}`;

const FS_SPHERE = `#version 300 es
precision highp float;
in vec2 uv; out vec4 o;
${SH_GLSL}
void main() {
  vec2 q = uv * 2.0 - 1.0; float r2 = dot(q, q);
  if (r2 > 1.0) { o = vec4(0.067, 0.067, 0.067, 1.0); return; }
  vec3 n = vec3(q.x, q.y, -sqrt(1.0 - r2)); // camera frame: y down, facing the camera
  o = vec4(toSrgb(0.18 * irradiance(n)), 1.0);
}`;

const FS_PANO = `#version 300 es
precision highp float;
in vec2 uv; out vec4 o;
uniform sampler2D pano; uniform float az, el, fov, aspect;
void main() {
  float t = tan(fov * 0.5);
  vec3 d = normalize(vec3((uv.x * 2.0 - 1.0) * t * aspect, (1.0 - uv.y * 2.0) * t, 1.0)); // y up, +z ahead
  float ce = cos(el), se = sin(el);
  d = vec3(d.x, ce * d.y + se * d.z, -se * d.y + ce * d.z);
  float ca = cos(az), sa = sin(az);
  d = vec3(ca * d.x + sa * d.z, d.y, -sa * d.x + ca * d.z);
  float theta = acos(clamp(d.y, -1.0, 1.0)), phi = atan(d.x, d.z); // the map's frame (engines/relight/sphere.py)
  o = vec4(texture(pano, vec2(phi / (2.0 * 3.14159265) + 0.5, theta / 3.14159265)).rgb, 1.0);
}`;

function program(gl, fs) {
  const mk = (type, src) => {
    const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    return s;
  };
  const p = gl.createProgram();
  gl.attachShader(p, mk(gl.VERTEX_SHADER, VS)); gl.attachShader(p, mk(gl.FRAGMENT_SHADER, fs));
  gl.linkProgram(p);
  if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p));
  const buf = gl.createBuffer();
  gl.bindBuffer(gl.ARRAY_BUFFER, buf);
  gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
  const loc = gl.getAttribLocation(p, "p");
  gl.enableVertexAttribArray(loc); gl.vertexAttribPointer(loc, 2, gl.FLOAT, false, 0, 0);
  return p;
}

function context(canvas) {
  const gl = canvas.getContext("webgl2", { preserveDrawingBuffer: true, antialias: false, premultipliedAlpha: false });
  if (!gl) throw new Error("WebGL2 is not available");
  return gl;
}

function safeUrl(u) { // only same-origin asset paths: a query string never points the page elsewhere
  if (!u) return null;
  if (!/^\/api\/v1\/assets\/[A-Za-z0-9_-]+$/.test(u)) throw new Error("refused URL " + u.slice(0, 80));
  return u;
}

async function loadImage(url) {
  const r = await fetch(url, { credentials: "same-origin" });
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return await createImageBitmap(await r.blob(), { colorSpaceConversion: "none", premultiplyAlpha: "none" });
}

function texture(gl, unit, bmp) {
  const t = gl.createTexture();
  gl.activeTexture(gl.TEXTURE0 + unit); gl.bindTexture(gl.TEXTURE_2D, t);
  gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, bmp);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
  return t;
}

function shUniform(sh) { // 27 numbers (9 rows × rgb) → × Â_l, flat
  const out = new Float32Array(27);
  for (let k = 0; k < 9; k++) for (let ch = 0; ch < 3; ch++) out[k * 3 + ch] = sh[k * 3 + ch] * A_HAT[k];
  return out;
}

class Lit { // one canvas, one program, SH + yaw uniforms
  constructor(canvas, fs) { this.gl = context(canvas); this.p = program(this.gl, fs); this.canvas = canvas; }
  u(name) { return this.gl.getUniformLocation(this.p, name); }
  draw(state) {
    const gl = this.gl;
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.useProgram(this.p);
    gl.uniform3fv(this.u("c"), state.c);
    gl.uniform1f(this.u("yaw"), state.yaw * Math.PI / 180);
    if (this.extra) this.extra(gl, state);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }
}

async function main() {
  const q = new URLSearchParams(location.search);
  const status = document.getElementById("status");
  const state = { ready: false, frames: 0, fps: 0, error: null, yaw: Number(q.get("yaw") || 0),
    strength: Number(q.get("strength") || 0.8), mode: q.get("mode") === "mul" ? "mul" : "add", c: null };
  window.__relight = state;
  const yawIn = document.getElementById("yaw"), yawV = document.getElementById("yawv");
  const strIn = document.getElementById("strength"), modeIn = document.getElementById("mode");
  yawIn.value = state.yaw; strIn.value = state.strength; modeIn.value = state.mode; yawV.textContent = state.yaw + "°";
  const views = [];
  const redraw = () => { for (const v of views) v.draw(state); state.frames++; };
  state.setYaw = (deg) => { state.yaw = Number(deg); yawIn.value = state.yaw; yawV.textContent = Math.round(state.yaw) + "°"; redraw(); };
  state.benchmark = (n = 120) => { // frames per second of re-shading while the yaw turns (yaw restored)
    const keep = state.yaw, px = new Uint8Array(4), gl = views[0].gl, t0 = performance.now();
    for (let i = 0; i < n; i++) { // reading a pixel back waits for the frame to be drawn (finish() may not)
      state.yaw = (i * 3) % 360 - 180; redraw(); gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
    }
    const fps = n / ((performance.now() - t0) / 1000);
    state.setYaw(keep);
    return fps;
  };
  try {
    const sh = (q.get("sh") || "").split(",").filter((s) => s !== "").map(Number);
    if (sh.length && (sh.length !== 27 || sh.some((v) => !Number.isFinite(v)))) throw new Error("sh must be 27 numbers");
    state.c = shUniform(sh.length ? sh : new Array(27).fill(0));
    const image = safeUrl(q.get("image")), pano = safeUrl(q.get("pano"));
    const pc = document.getElementById("portrait"), pn = document.getElementById("pano");
    if (image) {
      status.textContent = "loading…";
      const [img, nrm, mat] = await Promise.all([image, safeUrl(q.get("normals")), safeUrl(q.get("matte"))].map(loadImage));
      const maxSide = Number(q.get("w") || 512), s = Math.min(1, maxSide / Math.max(img.width, img.height));
      pc.width = Math.round(img.width * s); pc.height = Math.round(img.height * s);
      const v = new Lit(pc, FS_PORTRAIT);
      const gl = v.gl;
      gl.useProgram(v.p);
      texture(gl, 0, img); texture(gl, 1, nrm); texture(gl, 2, mat);
      gl.uniform1i(v.u("img"), 0); gl.uniform1i(v.u("nrm"), 1); gl.uniform1i(v.u("mat"), 2);
      v.extra = (g, st) => { g.uniform1f(v.u("strength"), st.strength); g.uniform1i(v.u("mode"), st.mode === "mul" ? 1 : 0); };
      views.push(v);
    } else pc.style.display = "none";
    if (sh.length) views.push(new Lit(document.getElementById("sphere"), FS_SPHERE));
    else document.getElementById("sphere").style.display = "none";
    if (pano) {
      const bmp = await loadImage(pano);
      const v = new Lit(pn, FS_PANO);
      v.gl.useProgram(v.p);
      const t = texture(v.gl, 0, bmp);
      v.gl.bindTexture(v.gl.TEXTURE_2D, t);
      v.gl.texParameteri(v.gl.TEXTURE_2D, v.gl.TEXTURE_WRAP_S, v.gl.REPEAT);
      const cam = { az: 0, el: 0 };
      v.extra = (g) => {
        g.uniform1i(v.u("pano"), 0); g.uniform1f(v.u("az"), cam.az - state.yaw * Math.PI / 180);
        g.uniform1f(v.u("el"), cam.el); g.uniform1f(v.u("fov"), 1.4); g.uniform1f(v.u("aspect"), pn.width / pn.height);
      };
      let drag = null;
      pn.addEventListener("pointerdown", (e) => { drag = [e.clientX, e.clientY]; pn.setPointerCapture(e.pointerId); });
      pn.addEventListener("pointerup", () => { drag = null; });
      pn.addEventListener("pointermove", (e) => {
        if (!drag) return;
        cam.az -= (e.clientX - drag[0]) * 0.008; cam.el = Math.max(-1.5, Math.min(1.5, cam.el + (e.clientY - drag[1]) * 0.008));
        drag = [e.clientX, e.clientY]; redraw();
      });
      state.look = (azDeg, elDeg) => { cam.az = azDeg * Math.PI / 180; cam.el = elDeg * Math.PI / 180; redraw(); };
      views.push(v);
    } else pn.style.display = "none";
    yawIn.addEventListener("input", () => state.setYaw(yawIn.value));
    strIn.addEventListener("input", () => { state.strength = Number(strIn.value); redraw(); });
    modeIn.addEventListener("change", () => { state.mode = modeIn.value; redraw(); });
    window.addEventListener("message", (e) => { // the Relight tab's own yaw slider drives this frame
      if (e.origin !== location.origin || !e.data || typeof e.data !== "object") return;
      if (Number.isFinite(e.data.yaw)) state.setYaw(e.data.yaw);
      if (Number.isFinite(e.data.strength)) { state.strength = e.data.strength; strIn.value = e.data.strength; redraw(); }
    });
    redraw();
    state.fps = Math.round(state.benchmark(30));
    document.getElementById("fps").textContent = state.fps + " fps";
    state.ready = true;
    status.textContent = "drag the yaw slider: the light turns around the subject";
  } catch (e) {
    state.error = String(e && e.message || e);
    status.textContent = "error: " + state.error;
  }
}

main();
