// The itmatch search page: text and picture queries against the JSON API, and the attention view.
// Plain browser JavaScript, no build step. Text from the server is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// One card per hit: thumbnail, score, caption. Clicking it explains (picture, text).
function showResults(hits, textOf) {
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of hits) {
    const card = element("figure", "result");
    card.tabIndex = 0;
    card.dataset.image = hit.image;
    const img = element("img");
    img.src = hit.thumbnail;
    img.alt = hit.caption || hit.name || `image ${hit.image}`;
    img.loading = "lazy";
    img.onerror = () => { img.replaceWith(element("div", "no-picture", "no picture")); };
    const caption = element("figcaption");
    caption.append(element("span", "score", hit.score.toFixed(3)), " ", hit.caption || hit.name || "");
    card.append(img, caption);
    const open = () => explain(hit.image, textOf(hit));
    card.addEventListener("click", open);
    card.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
    grid.append(card);
  }
}

async function searchText(query) {
  status("Searching…");
  try {
    const body = await api(`/search?q=${encodeURIComponent(query)}&top=24`);
    showResults(body.results, () => query);
    status(`${body.results.length} pictures for “${body.query}” (${body.candidates} re-ranked, ${body.ms} ms)`);
  } catch (error) {
    status(`Error: ${error.message}`);
  }
}

async function searchPicture(file) {
  status(`Reading ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  try {
    const body = await api("/search/image?top=24", { method: "POST", body: form });
    showResults(body.results, (hit) => hit.caption);
    status(`${body.results.length} captions for ${file.name} (${body.ms} ms); click one to see its picture's attention`);
  } catch (error) {
    status(`Error: ${error.message}`);
  }
}

// ---- attention view --------------------------------------------------------------------------------
const view = { data: null, picture: null, model: 0, word: 1 };

async function explain(image, text) {
  status(`Explaining “${text}” on image ${image}…`);
  try {
    const [data, picture] = await Promise.all([
      api(`/explain?image=${image}&q=${encodeURIComponent(text)}`),
      loadPicture(`/images/${image}?size=640`),
    ]);
    Object.assign(view, { data, picture, model: 0, word: Math.min(1, data.words.length - 1) });
    $("attention-title").textContent = `“${data.text}” — image ${image}`;
    const select = $("attention-model");
    select.replaceChildren(...data.models.map((m, i) => {
      const option = element("option", null, `${m.model} (score ${m.score.toFixed(3)})`);
      option.value = i;
      return option;
    }));
    $("attention").hidden = false;
    renderAttention();
    status("");
    $("attention").scrollIntoView({ behavior: "smooth", block: "nearest" });
  } catch (error) {
    status(`Error: ${error.message}`);
  }
}

function loadPicture(url) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => resolve(null); // features-only pictures: draw the regions on a blank canvas
    img.src = url;
  });
}

function renderAttention() {
  const { data, model } = view;
  const explained = data.models[model];
  const words = $("words");
  words.replaceChildren(...data.words.map((word, i) => {
    const chip = element("button", "word", word);
    chip.type = "button";
    chip.classList.toggle("selected", i === view.word);
    chip.classList.toggle("unknown", !data.known[i]);
    chip.title = data.known[i] ? "" : "not in the model's vocabulary";
    chip.addEventListener("click", () => { view.word = i; renderAttention(); });
    return chip;
  }));
  renderGates(explained);
  drawHeat(explained.attention[view.word]);
}

// SAF's filtration weights: one bar per word (the global node's weight in the title).
function renderGates(explained) {
  const box = $("gates");
  box.replaceChildren();
  if (!explained.gates) return;
  const peak = Math.max(...explained.gates, 1e-9);
  box.append(element("h3", null, `${explained.model}: weight of each word (global ${explained.global_gate.toFixed(3)})`));
  explained.gates.forEach((gate, i) => {
    const row = element("div", "gate");
    const bar = element("div", "bar");
    bar.style.width = `${(100 * gate) / peak}%`;
    const track = element("div", "track");
    track.append(bar);
    row.append(element("span", "gate-word", view.data.words[i]), track, element("span", "gate-value", gate.toFixed(3)));
    box.append(row);
  });
}

// Shade the picture: regions' boxes accumulate the word's attention on a grid; dim what gets little.
function drawHeat(weights) {
  const canvas = $("attention-canvas");
  const ctx = canvas.getContext("2d");
  const picture = view.picture;
  const scale = picture ? Math.min(480 / picture.width, 480 / picture.height) : 1;
  canvas.width = picture ? Math.round(picture.width * scale) : 480;
  canvas.height = picture ? Math.round(picture.height * scale) : 480;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (picture) ctx.drawImage(picture, 0, 0, canvas.width, canvas.height);
  const boxes = view.data.boxes;
  if (!boxes) return;
  const cells = 48;
  const heat = new Float32Array(cells * cells);
  boxes.forEach(([x1, y1, x2, y2], r) => {
    for (let y = Math.floor(y1 * cells); y < Math.max(Math.ceil(y2 * cells), Math.floor(y1 * cells) + 1); y++) {
      for (let x = Math.floor(x1 * cells); x < Math.max(Math.ceil(x2 * cells), Math.floor(x1 * cells) + 1); x++) {
        if (x < cells && y < cells) heat[y * cells + x] += weights[r];
      }
    }
  });
  const peak = Math.max(...heat, 1e-9);
  const shade = document.createElement("canvas"); // one pixel per cell, stretched smoothly over the picture
  shade.width = shade.height = cells;
  const pixels = shade.getContext("2d").createImageData(cells, cells);
  heat.forEach((value, i) => pixels.data.set([20, 20, 40, Math.round(255 * 0.7 * (1 - value / peak))], 4 * i));
  shade.getContext("2d").putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(shade, 0, 0, canvas.width, canvas.height);
  const best = weights.indexOf(Math.max(...weights));
  const [x1, y1, x2, y2] = boxes[best];
  ctx.strokeStyle = "#ff3b30";
  ctx.lineWidth = 2;
  ctx.strokeRect(x1 * canvas.width, y1 * canvas.height, (x2 - x1) * canvas.width, (y2 - y1) * canvas.height);
}

// ---- wiring ----------------------------------------------------------------------------------------
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = $("query").value.trim();
  if (query) searchText(query);
});
$("attention-model").addEventListener("change", (event) => { view.model = Number(event.target.value); renderAttention(); });
$("attention-close").addEventListener("click", () => { $("attention").hidden = true; });
$("file").addEventListener("change", (event) => { if (event.target.files[0]) searchPicture(event.target.files[0]); });
const drop = $("drop");
["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (file) searchPicture(file);
});
api("/health").then((health) => {
  const rerankers = health.models.rerankers.length ? ` → ${health.models.rerankers.join(" + ")}` : "";
  $("gallery-size").textContent = `· ${health.images} pictures · ${health.models.embedder}${rerankers}`;
  if (!health.picture_queries) drop.hidden = true;
}).catch(() => status("The service does not answer."));
