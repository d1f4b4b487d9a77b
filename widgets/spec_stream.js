function span(text, cls) {
  const s = document.createElement("span");
  s.className = "tx-tok " + cls;
  s.textContent = text === "\n" ? "⏎" : text;
  return s;
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "tx-view tx-spec";
  el.appendChild(root);
  function draw() {
    root.replaceChildren();
    const title = document.createElement("div");
    title.className = "tx-title";
    const calls = model.get("calls");
    const drafted = calls.reduce((a, c) => a + c.accepted.length + c.rejected.length, 0);
    const accepted = calls.reduce((a, c) => a + c.accepted.length, 0);
    title.textContent = `${model.get("title")} ${calls.length} target calls, ${accepted}/${drafted} drafted tokens accepted`;
    root.appendChild(title);
    for (const c of calls) {
      const box = document.createElement("span");
      box.className = "tx-call";
      c.accepted.forEach((t) => box.appendChild(span(t, "tx-acc")));
      c.rejected.forEach((t) => box.appendChild(span(t, "tx-rej")));
      if (c.bonus !== undefined && c.bonus !== null) box.appendChild(span(c.bonus, "tx-bonus"));
      root.appendChild(box);
    }
    const keyBox = document.createElement("div");
    keyBox.className = "tx-key";
    for (const [cls, text] of [["tx-acc", "drafted, kept"], ["tx-rej", "drafted, thrown away"],
                               ["tx-bonus", "the target's own token"]]) {
      keyBox.appendChild(span(text, cls));
    }
    root.appendChild(keyBox);
  }
  model.on("change:calls", draw);
  model.on("change:title", draw);
  draw();
}

export default { render };
