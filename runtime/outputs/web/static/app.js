// netvlad-kit live view: places and track on a canvas, the newest localisation pushed by Server-Sent Events.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("map");
const ctx = canvas.getContext("2d");
let places = { easting: [], northing: [] };
let track = [];
let current = null;
let bounds = null;
let lastMatch = -1;

function computeBounds() {
  const xs = places.easting.concat(track.map((p) => p[0]));
  const ys = places.northing.concat(track.map((p) => p[1]));
  if (!xs.length) return null;
  const minX = Math.min(...xs), maxX = Math.max(...xs), minY = Math.min(...ys), maxY = Math.max(...ys);
  const scale = Math.min((canvas.width - 40) / Math.max(maxX - minX, 1), (canvas.height - 40) / Math.max(maxY - minY, 1));
  // centred: a straight route along one axis sits in the middle, not on an edge
  return { cx: (minX + maxX) / 2, cy: (minY + maxY) / 2, scale };
}

function toPixel(e, n) {
  return [canvas.width / 2 + (e - bounds.cx) * bounds.scale, canvas.height / 2 - (n - bounds.cy) * bounds.scale];
}

function draw() {
  ctx.fillStyle = "#111";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!bounds) return;
  ctx.fillStyle = "#777";
  for (let i = 0; i < places.easting.length; i++) {
    const [x, y] = toPixel(places.easting[i], places.northing[i]);
    ctx.fillRect(x - 2, y - 2, 4, 4);
  }
  if (track.length) {
    ctx.strokeStyle = "#ffa000";
    ctx.lineWidth = 2;
    ctx.beginPath();
    track.forEach((p, i) => {
      const [x, y] = toPixel(p[0], p[1]);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  if (current) {
    const [x, y] = toPixel(current.easting, current.northing);
    ctx.fillStyle = current.unknown ? "#9e9e9e" : "#e53935";
    ctx.beginPath();
    ctx.arc(x, y, Math.max(4, current.uncertainty_m * bounds.scale), 0, 2 * Math.PI);
    ctx.globalAlpha = 0.35;
    ctx.fill();
    ctx.globalAlpha = 1;
    ctx.beginPath();
    ctx.arc(x, y, 4, 0, 2 * Math.PI);
    ctx.fill();
  }
  canvas.dataset.trackPoints = String(track.length);
}

function show(u) {
  current = u;
  if (u.frame) $("frame").src = u.frame;
  if (u.best.id !== lastMatch) {
    $("match").src = "/map-image/" + u.best.id;
    lastMatch = u.best.id;
  }
  $("frame-index").textContent = u.index;
  $("frame-source").textContent = u.source;
  $("match-id").textContent = u.best.id + " " + u.best.image;
  $("match-sim").textContent = "similarity " + u.best.similarity.toFixed(3);
  $("verdict").textContent = u.unknown ? "unknown place" : "known place";
  $("verdict").className = "badge " + (u.unknown ? "unknown" : "known");
  $("confidence").value = u.confidence;
  $("confidence-text").textContent = u.confidence.toFixed(2);
  $("position").textContent = "E " + u.easting.toFixed(1) + "  N " + u.northing.toFixed(1) + " m";
  $("latlon").textContent = u.lat === null ? "-" : u.lat.toFixed(6) + ", " + u.lon.toFixed(6);
  $("heading").textContent = u.heading === null ? "-" : u.heading.toFixed(1) + "\u00b0";
  $("uncertainty").textContent = "\u00b1 " + u.uncertainty_m.toFixed(1) + " m";
  track.push([u.easting, u.northing]);
  if (!bounds || track.length % 50 === 1) bounds = computeBounds();
  document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
  draw();
}

async function start() {
  places = await (await fetch("/places.json")).json();
  track = await (await fetch("/track.json")).json();
  $("map-name").textContent = places.name || "";
  $("place-count").textContent = places.count;
  bounds = computeBounds();
  draw();
  const events = new EventSource("/events");
  events.onopen = () => { $("connection").textContent = "live"; $("connection").className = "badge on"; };
  events.onerror = () => { $("connection").textContent = "disconnected"; $("connection").className = "badge off"; };
  events.onmessage = (message) => show(JSON.parse(message.data));
}

start();
