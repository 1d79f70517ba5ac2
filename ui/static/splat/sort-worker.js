// Depth sort for the sorted-alpha mode, off the main thread.
// In:  {positions: Float32Array(3N)} once, then {view: [r20, r21, r22, t2], id}
// Out: {order: Uint32Array(N) far-to-near, id, ms}
// A 16-bit counting sort over quantised camera depth: O(N), ~2 ms for 100k splats.
let positions = null;
let n = 0;

self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg.positions) {
    positions = msg.positions;
    n = positions.length / 3;
    return;
  }
  if (!msg.view || !positions) return;
  const t0 = performance.now();
  const [a, b, c, d] = msg.view;
  const depth = new Float32Array(n);
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const z = a * positions[3 * i] + b * positions[3 * i + 1] + c * positions[3 * i + 2] + d;
    depth[i] = z;
    if (z < lo) lo = z;
    if (z > hi) hi = z;
  }
  const BUCKETS = 65536;
  const scale = hi > lo ? (BUCKETS - 1) / (hi - lo) : 0;
  const counts = new Uint32Array(BUCKETS);
  const key = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    // far first: invert so larger depth gets the smaller key
    const k = (BUCKETS - 1) - Math.floor((depth[i] - lo) * scale);
    key[i] = k;
    counts[k]++;
  }
  let sum = 0;
  for (let k = 0; k < BUCKETS; k++) { const c0 = counts[k]; counts[k] = sum; sum += c0; }
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[counts[key[i]]++] = i;
  self.postMessage({order, id: msg.id, ms: performance.now() - t0}, [order.buffer]);
};
