// A colour key: no meaning by colour alone.
function key(entries) {
  const box = document.createElement("div");
  box.className = "tx-key";
  for (const [cls, text] of entries) {
    const item = document.createElement("span");
    const sw = document.createElement("span");
    sw.className = "tx-swatch " + cls;
    item.appendChild(sw);
    item.appendChild(document.createTextNode(text));
    box.appendChild(item);
  }
  return box;
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "tx-view tx-exit";
  el.appendChild(root);
  function draw() {
    root.replaceChildren();
    const tokens = model.get("tokens");
    const exits = model.get("exit_layers");
    const layers = model.get("n_layers");
    const title = document.createElement("div");
    title.className = "tx-title";
    const mean = exits.length ? exits.reduce((a, b) => a + b, 0) / exits.length : 0;
    title.textContent = `${model.get("title")} mean exit layer ${mean.toFixed(2)} of ${layers}`;
    root.appendChild(title);
    const table = document.createElement("table");
    table.className = "tx-grid";
    // Top row is the last layer; a token's column is filled up to where it left.
    for (let layer = layers; layer >= 1; layer--) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.textContent = `L${layer}`;
      tr.appendChild(th);
      exits.forEach((e, i) => {
        const td = document.createElement("td");
        td.className = layer < e ? "tx-ran" : layer === e ? "tx-exit" : "tx-skip";
        td.title = `token ${JSON.stringify(tokens[i])} left at layer ${e}`;
        tr.appendChild(td);
      });
      table.appendChild(tr);
    }
    const foot = document.createElement("tr");
    foot.appendChild(document.createElement("th"));
    tokens.forEach((t) => {
      const th = document.createElement("th");
      th.textContent = t === "\n" ? "⏎" : t;
      foot.appendChild(th);
    });
    table.appendChild(foot);
    root.appendChild(table);
    root.appendChild(key([["tx-ran", "layer ran"], ["tx-exit", "left here (prediction confident)"],
                          ["tx-skip", "skipped"]]));
  }
  for (const name of ["tokens", "exit_layers", "n_layers", "title"]) model.on(`change:${name}`, draw);
  draw();
}

export default { render };
