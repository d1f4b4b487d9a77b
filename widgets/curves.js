const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
const NS = "http://www.w3.org/2000/svg";

function node(tag, attrs, parent) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (parent) parent.appendChild(n);
  return n;
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "tx-view tx-curves";
  el.appendChild(root);
  const W = 420, H = 220, L = 40, B = 30, T = 10, R = 110;
  function draw() {
    root.replaceChildren();
    const title = document.createElement("div");
    title.className = "tx-title";
    title.textContent = model.get("title");
    root.appendChild(title);
    const curves = model.get("curves");
    const ks = Object.values(curves).flat().map((p) => p[0]);
    const kmax = Math.max(2, ...ks);
    // k on a log2 axis: coverage rises about log-linearly in k (Brown et al. 2024).
    const x = (k) => L + ((W - L - R) * Math.log2(k)) / Math.log2(kmax);
    const y = (v) => T + (H - T - B) * (1 - v);
    const svg = node("svg", { width: W, height: H }, root);
    node("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), stroke: "#888" }, svg);
    node("line", { x1: L, y1: y(0), x2: L, y2: y(1), stroke: "#888" }, svg);
    for (const v of [0, 0.5, 1]) {
      const t = node("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 10 }, svg);
      t.textContent = v.toFixed(1);
    }
    for (let k = 1; k <= kmax; k *= 2) {
      const t = node("text", { x: x(k), y: H - B + 14, "text-anchor": "middle", "font-size": 10 }, svg);
      t.textContent = k;
    }
    const labels = [];
    Object.entries(curves).forEach(([name, pts], i) => {
      const d = pts.map((p, j) => `${j ? "L" : "M"}${x(p[0])},${y(p[1])}`).join(" ");
      node("path", { d, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2, "data-name": name }, svg);
      const last = pts[pts.length - 1];
      if (last) labels.push({ name, at: y(last[1]) + 4, color: COLORS[i % COLORS.length] });
    });
    // Curves often end at one value (every aggregator equal at k = n): stack their labels 12 px apart.
    labels.sort((a, b) => a.at - b.at);
    labels.forEach((l, j) => {
      if (j && l.at < labels[j - 1].at + 12) l.at = labels[j - 1].at + 12;
      const t = node("text", { x: W - R + 6, y: l.at, "font-size": 11, fill: l.color }, svg);
      t.textContent = l.name;
    });
    const k = model.get("k");
    node("line", { x1: x(k), y1: y(0), x2: x(k), y2: y(1), stroke: "#333", "stroke-dasharray": "4 3", class: "tx-k" }, svg);
  }
  for (const name of ["curves", "k", "title"]) model.on(`change:${name}`, draw);
  draw();
}

export default { render };
