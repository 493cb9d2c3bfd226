-- The waiting page (GET /queue/:skuId on the public listener): one
-- self-contained HTML document, no external assets.  It joins the queue
-- (userId from ?user= or the form), keeps the ticket in localStorage, polls
-- the status as Retry-After says, and turns into "your turn" with a buy
-- button, or "sold out".
return [==[<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Waiting room</title>
<style>
  body { margin: 0; min-height: 100vh; display: flex; align-items: center; justify-content: center;
         background: #0f1419; color: #e6edf3; font: 16px/1.5 system-ui, "DejaVu Sans", sans-serif; }
  main { width: min(460px, 92vw); background: #182029; border: 1px solid #26313d; border-radius: 12px; padding: 28px; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  .dim { color: #8b98a5; font-size: 13px; }
  .big { font-size: 56px; font-weight: 700; font-variant-numeric: tabular-nums; margin: 12px 0 0; }
  .row { display: flex; gap: 24px; margin: 8px 0 16px; }
  .row div b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
  button { font: inherit; padding: 10px 22px; border-radius: 8px; border: 0; background: #3fb950; color: #0f1419;
           font-weight: 600; cursor: pointer; }
  button[disabled] { opacity: .5; cursor: default; }
  input { font: inherit; padding: 8px; border-radius: 6px; border: 1px solid #26313d; background: #0f1419; color: inherit; }
  [hidden] { display: none !important; }
  #msg { min-height: 1.5em; margin-top: 12px; }
  .turn { color: #3fb950; } .gone { color: #f85149; }
</style>
</head>
<body>
<main>
  <h1>Waiting room</h1>
  <div class="dim">Ticket sale <span id="sku"></span>. Keep this page open: it updates by itself.</div>
  <div id="state" data-state="idle">
    <form id="join" hidden><p><input id="user" placeholder="your user id" inputmode="numeric">
      <button type="submit">Join</button></p></form>
    <section id="waiting" hidden>
      <div class="big" id="position">–</div>
      <div class="dim" id="posLabel">your place in line</div>
      <div class="row">
        <div><span class="dim">people ahead</span><b id="ahead">–</b></div>
        <div><span class="dim">estimated wait</span><b id="eta">–</b></div>
      </div>
    </section>
    <section id="turn" hidden>
      <p class="big turn">Your turn</p>
      <p>Buy before <span id="until"></span>.</p>
      <button id="buy" type="button">Buy a ticket</button>
    </section>
    <section id="over" hidden><p class="big gone" id="overText">Sold out</p></section>
  </div>
  <div id="msg" class="dim"></div>
</main>
<script>
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var sku = (location.pathname.match(/\/queue\/(\d+)/) || [])[1];
  var params = new URLSearchParams(location.search);
  var store = "queue:" + sku;
  var saved = {};
  try { saved = JSON.parse(localStorage.getItem(store) || "{}"); } catch (e) { saved = {}; }
  var user = params.get("user") || saved.user, ticket = saved.user === user ? saved.ticket : null, token = null;
  $("sku").textContent = sku || "?";

  function show(state) {
    $("state").setAttribute("data-state", state);
    $("join").hidden = state !== "idle";
    $("waiting").hidden = state !== "waiting";
    $("turn").hidden = state !== "admitted";
    $("over").hidden = state !== "sold_out" && state !== "expired" && state !== "bought";
  }
  function say(text) { $("msg").textContent = text || ""; }
  function duration(s) {
    if (s == null) return "–";
    if (s < 60) return s + " s";
    return Math.floor(s / 60) + " min " + (s % 60) + " s";
  }

  function render(d) {
    if (d.ticket) { ticket = d.ticket; try { localStorage.setItem(store, JSON.stringify({ user: user, ticket: ticket })); } catch (e) {} }
    show(d.state);
    if (d.state === "waiting") {
      if (d.preQueue) {
        $("position").textContent = "…";
        $("posLabel").textContent = "the line is drawn at random when the sale opens";
        $("ahead").textContent = "–";
        $("eta").textContent = duration(d.opensInSec);
      } else {
        $("position").textContent = String(d.position);
        $("posLabel").textContent = "your place in line";
        $("ahead").textContent = String(d.ahead);
        $("eta").textContent = duration(d.etaSec);
      }
    } else if (d.state === "admitted") {
      token = d.token;
      $("until").textContent = new Date(d.expiresAt).toLocaleTimeString();
    } else if (d.state === "sold_out") {
      $("overText").textContent = "Sold out";
    } else if (d.state === "expired") {
      $("overText").textContent = "Your turn has passed";
      say(d.message);
    }
  }

  function poll(after) {
    setTimeout(function () {
      fetch("/api/v1/flash/queue/" + sku + "/status?ticket=" + encodeURIComponent(ticket), { cache: "no-store" })
        .then(function (r) { return r.json().then(function (d) { return [r, d]; }); })
        .then(function (rd) {
          var r = rd[0], d = rd[1], next = Number(r.headers.get("Retry-After")) || 2;
          if (!r.ok) { say(d.message || "try again"); return poll(next); }
          say("");
          render(d);
          if (d.state === "waiting") poll(next);
        })
        .catch(function () { say("connection lost, retrying"); poll(3); });
    }, after * 1000);
  }

  function join() {
    show("waiting");
    fetch("/api/v1/flash/queue/" + sku + "/join", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ userId: user }) })
      .then(function (r) { return r.json().then(function (d) { return [r, d]; }); })
      .then(function (rd) {
        var r = rd[0], d = rd[1], next = Number(r.headers.get("Retry-After")) || 2;
        if (!r.ok) { say(d.message || d.error); if (r.status === 425 || r.status >= 500) setTimeout(join, next * 1000); return; }
        render(d);
        if (d.state === "waiting") poll(next);
      })
      .catch(function () { say("connection lost, retrying"); setTimeout(join, 3000); });
  }

  $("buy").addEventListener("click", function () {
    $("buy").disabled = true;
    fetch("/api/v1/flash/purchase", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ userId: user, skuId: sku, quantity: 1, queueToken: token }) })
      .then(function (r) { return r.json(); })
      .then(function (d) {
        if (d.success) { show("bought"); $("overText").textContent = "Reserved"; say("order " + d.orderId + ": pay before it expires"); }
        else { say(d.message || d.error); if (d.error === "SOLD_OUT") render({ state: "sold_out" }); else $("buy").disabled = false; }
      })
      .catch(function () { say("connection lost: try again"); $("buy").disabled = false; });
  });

  $("join").addEventListener("submit", function (ev) {
    ev.preventDefault();
    user = $("user").value.trim();
    if (/^[1-9]\d*$/.test(user)) join(); else say("a user id is digits");
  });

  if (!sku) { say("no sale in this address"); show("expired"); }
  else if (user) join();
  else show("idle");
})();
</script>
</body>
</html>
]==]
