-- The live sale page (GET / on the admin listener): one self-contained HTML
-- document, no external assets.  It polls /admin/v1/live every second and
-- derives rates and the recent p99 from successive answers.
return [==[<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>flashhost · live sale</title>
<style>
  :root { --bg:#0f1419; --panel:#182029; --line:#26313d; --text:#e6edf3; --dim:#8b98a5;
          --avail:#3fb950; --res:#d29922; --sold:#58a6ff; --bad:#f85149; }
  * { box-sizing: border-box; }
  body { margin: 0; background: var(--bg); color: var(--text);
         font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
  header { display: flex; align-items: center; gap: 12px; padding: 14px 24px;
           border-bottom: 1px solid var(--line); }
  header h1 { font-size: 18px; margin: 0; font-weight: 600; }
  #state { font-size: 12px; padding: 2px 8px; border-radius: 10px; background: var(--line); color: var(--dim); }
  #state.live { background: rgba(63,185,80,.15); color: var(--avail); }
  #state.down { background: rgba(248,81,73,.15); color: var(--bad); }
  #meta { margin-left: auto; color: var(--dim); font-size: 12px; }
  main { padding: 18px 24px; }
  .cards { display: grid; grid-template-columns: repeat(6, minmax(0, 1fr)); gap: 12px; }
  .card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
  .card .k { color: var(--dim); font-size: 12px; }
  .card .v { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
  .card .s { color: var(--dim); font-size: 11px; }
  .chart { margin-top: 12px; background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
           padding: 8px 14px; }
  .chart .legend { color: var(--dim); font-size: 12px; }
  .chart .legend b { display: inline-block; width: 10px; height: 3px; vertical-align: middle; margin: 0 4px 0 10px; }
  canvas { width: 100%; height: 90px; display: block; }
  table { width: 100%; border-collapse: collapse; margin-top: 16px; font-variant-numeric: tabular-nums; }
  th, td { padding: 8px 10px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
  th { color: var(--dim); font-weight: 500; font-size: 12px; }
  th.l, td.l { text-align: left; }
  td.name { max-width: 240px; overflow: hidden; text-overflow: ellipsis; }
  .badge { font-size: 11px; padding: 1px 7px; border-radius: 9px; }
  .ACTIVE { background: rgba(63,185,80,.15); color: var(--avail); }
  .SOLD_OUT { background: rgba(248,81,73,.15); color: var(--bad); }
  .bar { display: flex; width: 220px; height: 10px; border-radius: 5px; overflow: hidden; background: var(--line); }
  .bar i { display: block; height: 100%; }
  .bar .sold { background: var(--sold); } .bar .res { background: var(--res); } .bar .avail { background: var(--avail); }
  #empty { color: var(--dim); padding: 24px 0; }
  footer { color: var(--dim); font-size: 12px; padding: 0 24px 18px; }
</style>
</head>
<body>
<header>
  <h1>Live sale</h1><span id="state">connecting…</span>
  <span id="meta"></span>
</header>
<main>
  <div class="cards">
    <div class="card"><div class="k">Purchase requests / s</div><div class="v" id="rps">–</div><div class="s" id="requests"></div></div>
    <div class="card"><div class="k">Reserved / s</div><div class="v" id="okps">–</div><div class="s" id="success"></div></div>
    <div class="card"><div class="k">Refused / s</div><div class="v" id="rejps">–</div><div class="s" id="rejected"></div></div>
    <div class="card"><div class="k">p50 latency</div><div class="v" id="p50">–</div><div class="s" id="p50all"></div></div>
    <div class="card"><div class="k">p99 latency</div><div class="v" id="p99">–</div><div class="s" id="p99all"></div></div>
    <div class="card"><div class="k">Errors (5xx)</div><div class="v" id="errors">–</div><div class="s" id="workers"></div></div>
  </div>
  <div class="chart">
    <div class="legend"><span id="span">last 60 s</span> <b style="background:#8b98a5"></b>requests/s <b style="background:#3fb950"></b>reserved/s</div>
    <canvas id="chart" width="1100" height="90"></canvas>
  </div>
  <table>
    <thead><tr>
      <th class="l">SKU</th><th class="l">Name</th><th class="l">Status</th>
      <th>Available</th><th>Reserved</th><th>Sold</th><th>Initial</th>
      <th class="l">Stock</th><th>Tickets / s</th><th>Outbox</th><th class="l">Queue</th>
    </tr></thead>
    <tbody id="rows"></tbody>
  </table>
  <div id="empty" hidden>No open sale.</div>
</main>
<footer id="foot"></footer>
<script>
(function () {
  "use strict";
  var RATE_WINDOW = 5, P_WINDOW = 10, KEEP = 65;
  var hist = [];   // { t: seconds, d: answer }

  function $(id) { return document.getElementById(id); }
  function num(v) { return v == null ? "–" : String(Math.round(v)); }
  function rate(v) { return v == null ? "–" : (v >= 100 ? v.toFixed(0) : v.toFixed(1)); }
  function msText(v) { return v == null ? "–" : (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + " ms"; }
  function list(v) { return Array.isArray(v) ? v : []; }
  function le(b) { return b[0] === "+Inf" ? Infinity : Number(b[0]); }

  // The sample about `secs` ago (the oldest one inside the window), or null.
  function base(now, secs) {
    for (var i = 0; i < hist.length - 1; i++) if (hist[i].t >= now - secs - 0.5) return hist[i];
    return null;
  }
  function perSec(cur, old, dt) { return dt > 0 ? Math.max(0, cur - old) / dt : null; }

  // histogram_quantile over cumulative buckets [[le, count], ...]
  function quantile(q, buckets) {
    var b = buckets.map(function (x) { return [le(x), x[1]]; }).sort(function (x, y) { return x[0] - y[0]; });
    if (!b.length || b[b.length - 1][0] !== Infinity) return null;
    for (var i = 1; i < b.length; i++) if (b[i][1] < b[i - 1][1]) b[i][1] = b[i - 1][1];
    var total = b[b.length - 1][1];
    if (total <= 0) return null;
    var rank = q * total, j = 0;
    while (b[j][1] < rank) j++;
    if (b[j][0] === Infinity) return b.length > 1 ? b[b.length - 2][0] : null;
    var lo = j > 0 ? b[j - 1][0] : 0, below = j > 0 ? b[j - 1][1] : 0, inside = b[j][1] - below;
    return inside <= 0 ? b[j][0] : lo + (b[j][0] - lo) * (rank - below) / inside;
  }
  function bucketDelta(cur, old) {
    var prev = {};
    list(old).forEach(function (x) { prev[x[0]] = x[1]; });
    return list(cur).map(function (x) { return [x[0], Math.max(0, x[1] - (prev[x[0]] || 0))]; });
  }
  function sumWhere(obj, pred) {
    var s = 0;
    for (var k in obj) if (pred(k)) s += obj[k];
    return s;
  }

  function cell(tr, text, cls, value) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    if (value != null) td.setAttribute("data-value", String(value));
    tr.appendChild(td);
    return td;
  }

  function renderSkus(d, now) {
    var rows = $("rows"), skus = list(d.skus), old = base(now, RATE_WINDOW), oldSkus = {};
    if (old) list(old.d.skus).forEach(function (s) { oldSkus[s.skuId] = s; });
    rows.textContent = "";
    skus.forEach(function (s) {
      var tr = document.createElement("tr");
      tr.id = "sku-" + s.skuId;
      tr.setAttribute("data-sku", s.skuId);
      cell(tr, s.skuId, "l sku");
      cell(tr, s.name || "", "l name").title = s.name || "";
      var st = cell(tr, "", "l");
      var badge = document.createElement("span");
      badge.className = "badge " + s.status;
      badge.textContent = s.status === "SOLD_OUT" ? "sold out" : "on sale";
      st.appendChild(badge);
      cell(tr, num(s.available), "available", s.available);
      cell(tr, num(s.reserved), "reserved", s.reserved);
      cell(tr, num(s.sold), "sold", s.sold);
      cell(tr, num(s.initial), "initial", s.initial);
      var barTd = cell(tr, "", "l"), bar = document.createElement("div");
      bar.className = "bar";
      var init = Math.max(1, s.initial || 0);
      [["sold", s.sold], ["res", s.reserved], ["avail", s.available]].forEach(function (p) {
        var i = document.createElement("i");
        i.className = p[0];
        i.style.width = (100 * Math.max(0, p[1] || 0) / init).toFixed(2) + "%";
        bar.appendChild(i);
      });
      barTd.appendChild(bar);
      var o = oldSkus[s.skuId], r = o ? perSec(s.taken, o.taken, now - old.t) : null;
      cell(tr, rate(r), "rate", r == null ? null : r.toFixed(3));
      cell(tr, num(s.outbox), "outbox", s.outbox);
      var q = s.queue;
      cell(tr, q ? (num(q.length) + " waiting · " + num(q.admitted) + " in · " + num(q.used) + " used · " +
        num(q.expired) + " lapsed · " + (q.measuredPerSec || 0).toFixed(1) + "/" + num(q.admitPerSec) + " per s") : "–",
        "l queue", q ? q.length : null);
      rows.appendChild(tr);
    });
    $("empty").hidden = skus.length > 0;
  }

  function renderTotals(d, now) {
    var t = d.totals || {}, att = t.attempts || {}, resp = t.responses || {};
    var old = base(now, RATE_WINDOW), dt = old ? now - old.t : 0, ot = old ? (old.d.totals || {}) : {};
    var oatt = ot.attempts || {};
    var rps = old ? perSec(t.attemptsTotal || 0, ot.attemptsTotal || 0, dt) : null;
    var ok = old ? perSec(att.success || 0, oatt.success || 0, dt) : null;
    var refused = function (a) { return (a.rejected || 0) + (a.sold_out || 0); };
    var rej = old ? perSec(refused(att), refused(oatt), dt) : null;
    $("rps").textContent = rate(rps);
    $("okps").textContent = rate(ok);
    $("rejps").textContent = rate(rej);
    $("requests").textContent = num(t.attemptsTotal || 0) + " attempts in all";
    $("success").textContent = num(att.success || 0) + " reserved in all";
    $("rejected").textContent = num(refused(att)) + " refused in all";
    var errors = sumWhere(resp, function (k) { return k.charAt(0) === "5"; });
    $("errors").textContent = num(errors);
    $("errors").style.color = errors > 0 ? "var(--bad)" : "";
    $("workers").textContent = (t.workers || 0) + " workers, " + (t.restarts || 0) + " restarts";

    var pold = base(now, P_WINDOW), recent = pold ? bucketDelta(t.buckets, (pold.d.totals || {}).buckets) : [];
    var p50 = quantile(0.5, recent), p99 = quantile(0.99, recent);
    $("p50").textContent = msText(p50 == null ? null : p50 * 1000);
    $("p99").textContent = msText(p99 == null ? null : p99 * 1000);
    $("p50all").textContent = "last " + P_WINDOW + " s · " + msText(t.p50Ms) + " since start";
    $("p99all").textContent = "last " + P_WINDOW + " s · " + msText(t.p99Ms) + " since start";
    return { t: now, rps: rps, ok: ok };
  }

  var series = [];
  function drawChart() {
    var c = $("chart"), g = c.getContext("2d"), w = c.width, h = c.height;
    g.clearRect(0, 0, w, h);
    var pts = series.filter(function (p) { return p.rps != null; });
    if (pts.length < 2) return;
    var t1 = pts[pts.length - 1].t, span = Math.min(60, Math.max(10, t1 - pts[0].t)), t0 = t1 - span, max = 1;
    $("span").textContent = "last " + Math.round(span) + " s";
    pts.forEach(function (p) { max = Math.max(max, p.rps, p.ok || 0); });
    g.strokeStyle = "#26313d";
    g.beginPath(); g.moveTo(0, h - 0.5); g.lineTo(w, h - 0.5); g.stroke();
    g.fillStyle = "#8b98a5"; g.font = "11px sans-serif"; g.fillText(rate(max) + "/s", 4, 12);
    [["rps", "#8b98a5"], ["ok", "#3fb950"]].forEach(function (s) {
      g.strokeStyle = s[1]; g.lineWidth = 2; g.beginPath();
      pts.forEach(function (p, i) {
        var x = (p.t - t0) / span * w, y = h - 2 - (p[s[0]] || 0) / max * (h - 18);
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    });
  }

  function tick() {
    var x = new XMLHttpRequest();
    x.open("GET", "/admin/v1/live", true);
    x.timeout = 2500;
    x.onload = function () {
      var d = null;
      try { d = x.status === 200 ? JSON.parse(x.responseText) : null; } catch (e) { d = null; }
      if (!d) { down("answer " + x.status); return; }
      // the server's clock: when the numbers were read, whatever the network did
      var now = (typeof d.now === "number" ? d.now : Date.now()) / 1000;
      hist.push({ t: now, d: d });
      while (hist.length && hist[0].t < now - KEEP) hist.shift();
      renderSkus(d, now);
      series.push(renderTotals(d, now));
      while (series.length && series[0].t < now - 60) series.shift();
      drawChart();
      $("state").textContent = "live";
      $("state").className = "live";
      $("meta").textContent = (d.app || "") + " · node " + d.node + " · answered by worker " + d.worker;
      $("foot").textContent = "updated " + new Date(d.now).toISOString().replace("T", " ").slice(0, 19) + " UTC" +
        (d.otherSkus ? " · " + d.otherSkus + " other SKUs not shown (not on sale, or past the first 50)" : "");
      document.body.setAttribute("data-updated", String(d.now));
    };
    x.onerror = x.ontimeout = function () { down("no answer"); };
    x.onloadend = function () { setTimeout(tick, 1000); };
    x.send();
  }
  function down(why) {
    $("state").textContent = "offline: " + why;
    $("state").className = "down";
  }
  tick();
})();
</script>
</body>
</html>
]==]
