/* fastedge comments: the snippet a site includes (docs/embedding.md).
 *
 *   <div id="fastedge-comments" data-tenant="TENANT" data-url-id="ARTICLE-ID"></div>
 *   <script src="https://NODE/widget.js" async></script>
 *
 * It creates the comment iframe (served by the node, so the reader's
 * session is the node's), passes the page's URL and title, and sizes the
 * iframe to its content. Messages are checked both ways: only the iframe's
 * own origin and window may set its height, and the iframe only listens to
 * its parent at the origin named here.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var origin = new URL(script.src, location.href).origin;

  function mount(el) {
    if (el.getAttribute("data-fastedge-mounted")) return;
    var tenant = el.getAttribute("data-tenant");
    if (!tenant) return;
    el.setAttribute("data-fastedge-mounted", "1");
    var urlId = el.getAttribute("data-url-id") || location.origin + location.pathname;
    var title = el.getAttribute("data-title") || document.title || "";
    var q = new URLSearchParams({ urlId: urlId, title: title.slice(0, 200), host: location.origin });
    var sort = el.getAttribute("data-sort");
    if (sort) q.set("sort", sort);
    var frame = document.createElement("iframe");
    frame.src = origin + "/embed/" + encodeURIComponent(tenant) + "/?" + q.toString();
    frame.title = el.getAttribute("data-label") || "Comments";
    frame.style.width = "100%";
    frame.style.border = "0";
    frame.style.height = (parseInt(el.getAttribute("data-height"), 10) || 400) + "px";
    frame.setAttribute("scrolling", "no");
    // Where the browser gives the iframe no cookie and no storage at all,
    // this tab keeps its session for it (docs/embedding.md).
    var key = "fastedge:session:" + tenant;
    window.addEventListener("message", function (ev) {
      if (ev.origin !== origin || ev.source !== frame.contentWindow) return;
      var d = ev.data;
      if (d && d.type === "fastedge:session" && (typeof d.value === "string" || d.value === null)) {
        try {
          if (d.value) sessionStorage.setItem(key, d.value.slice(0, 1000));
          else sessionStorage.removeItem(key);
        } catch (e) {
          /* this page's storage is blocked too: the session lasts as long as the iframe */
        }
        return;
      }
      if (!d || d.type !== "fastedge:height" || typeof d.height !== "number" || !isFinite(d.height)) return;
      frame.style.height = Math.max(50, Math.min(Math.ceil(d.height), 100000)) + "px";
    });
    frame.addEventListener("load", function () {
      var msg = { type: "fastedge:host", url: location.href, title: document.title };
      try {
        var session = sessionStorage.getItem(key);
        if (session) msg.session = session;
      } catch (e) {
        /* nothing kept */
      }
      frame.contentWindow.postMessage(msg, origin);
    });
    el.appendChild(frame);
  }

  function mountAll() {
    var found = document.querySelectorAll("#fastedge-comments, [data-fastedge-comments]");
    for (var i = 0; i < found.length; i++) mount(found[i]);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mountAll);
  else mountAll();
})();
