// The rig cards' poll says which cards this page shows, so the panel answers with only the changed ones
// (swapped out of band) or with 204 when nothing changed (nodes/cards.py). Without this script every poll simply
// gets every card.
document.addEventListener("htmx:configRequest", function (event) {
  var list = event.detail.elt;
  if (list.id !== "rig-cards") return;
  var names = document.getElementById("rig-names");
  if (!names) return;
  var fps = Array.prototype.map.call(list.querySelectorAll("article.card[data-fp]"), function (card) {
    return card.getAttribute("data-fp");
  });
  event.detail.headers["X-Rig-Cards"] = names.getAttribute("data-hash") + ":" + fps.join("");
});

// "last seen 3 minutes ago" kept true by the browser: the panel resends a card only when what it shows changes.
function morpheusAges() {
  var now = Date.now();
  document.querySelectorAll("time[data-age]").forEach(function (time) {
    var seconds = Math.max(0, Math.round((now - Date.parse(time.getAttribute("datetime"))) / 1000));
    var text = seconds < 60 ? seconds + " s ago"
      : seconds < 3600 ? Math.floor(seconds / 60) + " min ago"
      : seconds < 172800 ? Math.floor(seconds / 3600) + " h ago"
      : Math.floor(seconds / 86400) + " days ago";
    if (time.textContent !== text) time.textContent = text;
  });
}
setInterval(morpheusAges, 1000);
document.addEventListener("DOMContentLoaded", morpheusAges);
