"""The web demo's single page: upload an image, type phrases, see the overlay (no external assets)."""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>TCL: segment an image with free-form phrases</title>
<style>
  body { font-family: sans-serif; margin: 1.5em; max-width: 70em; }
  fieldset { border: 1px solid #ccc; margin-bottom: 1em; }
  label { margin-right: 1.2em; }
  #phrases { width: 32em; }
  #error { color: #b00020; font-weight: bold; white-space: pre-wrap; }
  #status { color: #555; }
  #result { max-width: 100%; margin-top: 1em; display: none; border: 1px solid #ddd; }
  table { border-collapse: collapse; margin-top: 0.5em; }
  td { padding: 0.1em 0.8em; border-bottom: 1px solid #eee; }
</style>
</head>
<body>
<h1>TCL open-world segmentation</h1>
<form id="form">
  <fieldset>
    <p><label>Image <input type="file" id="image" accept="image/*" required></label></p>
    <p><label>Phrases (comma-separated)
      <input type="text" id="phrases" placeholder="cat, dog, grass" required></label></p>
    <p>
      <label><input type="checkbox" id="background" checked> background, threshold
        <input type="number" id="bg_thresh" value="__BG_THRESH__" min="0" max="1" step="0.05"></label>
      <label><input type="checkbox" id="pamr" __PAMR__> PAMR</label>
      <label>KP weight <input type="number" id="kp_w" value="__KP_W__" min="0" max="1" step="0.05"></label>
      <label><input type="checkbox" id="sliding" __SLIDING__> sliding windows</label>
    </p>
    <button type="submit" id="run">Segment</button>
    <span id="status"></span>
  </fieldset>
</form>
<div id="error" role="alert"></div>
<img id="result" alt="segmentation overlay">
<table id="fractions"></table>
<script>
const $ = (id) => document.getElementById(id);
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("cannot read the selected file"));
    reader.readAsDataURL(file);
  });
}
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").textContent = "";
  $("result").style.display = "none";
  $("fractions").innerHTML = "";
  $("status").textContent = "segmenting ...";
  $("run").disabled = true;
  document.body.dataset.state = "busy";
  try {
    const file = $("image").files[0];
    if (!file) throw new Error("choose an image first");
    const body = {
      image: await readFile(file), phrases: $("phrases").value,
      background: $("background").checked, bg_thresh: parseFloat($("bg_thresh").value),
      pamr: $("pamr").checked, kp_w: parseFloat($("kp_w").value), sliding: $("sliding").checked,
    };
    const response = await fetch("api/segment", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    let reply;
    try { reply = await response.json(); } catch (e) { reply = {error: "HTTP " + response.status}; }
    if (!response.ok) throw new Error(reply.error || ("HTTP " + response.status));
    const img = $("result");
    await new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; img.src = reply.overlay; });
    img.style.display = "block";
    const rows = reply.classes.map((name) =>
      "<tr><td>" + name.replace(/[&<>]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;"})[c]) +
      "</td><td>" + (100 * reply.fractions[name]).toFixed(1) + " %</td></tr>");
    $("fractions").innerHTML = rows.join("");
    $("status").textContent = reply.width + "x" + reply.height + " in " + reply.seconds.toFixed(2) + " s";
    document.body.dataset.state = "done";
  } catch (err) {
    $("error").textContent = err.message;
    $("status").textContent = "";
    document.body.dataset.state = "error";
  } finally {
    $("run").disabled = false;
  }
});
</script>
</body>
</html>
"""
