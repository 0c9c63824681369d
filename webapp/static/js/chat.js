// Chat page behaviour that HTML alone cannot give: Enter sends, copy, scroll, clear on send.
(function () {
  "use strict";

  // A touch screen's keyboard has no Shift+Enter: there Enter starts a new line, as in the chat
  // apps people use on phones, and the Send button sends (the composer's hint says so).
  var touchFirst = window.matchMedia("(hover: none) and (pointer: coarse)").matches;

  function fitHints(root) {
    if (!touchFirst || !root.querySelectorAll) return;
    root.querySelectorAll("textarea[data-touch-placeholder]").forEach(function (box) {
      box.placeholder = box.getAttribute("data-touch-placeholder");
    });
  }
  document.addEventListener("htmx:load", function (event) { fitHints(event.detail.elt); });
  document.addEventListener("DOMContentLoaded", function () { fitHints(document); });

  document.addEventListener("keydown", function (event) {
    var box = event.target;
    if (!(box instanceof HTMLTextAreaElement) || !box.hasAttribute("data-submit-on-enter")) return;
    if (touchFirst) return;
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      // While an answer is written, Stop stands where Send was: Enter waits, keeping the draft.
      var answering = document.querySelector(".msg.status-pending, .msg.status-streaming");
      if (box.value.trim() !== "" && !answering) box.form.requestSubmit();
    }
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-from]");
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy-from"));
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.innerText).then(function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    });
  });

  // Follow the answer as it grows, unless the reader has scrolled up to read something else.
  var following = true;
  window.addEventListener("scroll", function () {
    var bottom = window.innerHeight + window.scrollY;
    following = bottom >= document.documentElement.scrollHeight - 80;
  }, { passive: true });

  function scrollToEnd() {
    if (!document.getElementById("thread") || !following) return;
    // The page end, where the composer sits in its place below the thread (not over it).
    window.scrollTo(0, document.documentElement.scrollHeight);
  }

  // A send, a regenerate or an edit says which message the page ends with: when the change
  // goes right there, the server answers with the end of the thread alone, which the composer
  // appends or which takes the old end's place (else with the whole thread).
  document.addEventListener("htmx:configRequest", function (event) {
    var elt = event.detail.elt;
    if (!elt || !(elt.id === "composer" || elt.matches("form.regenerate, details.edit form"))) return;
    var shown = document.querySelectorAll("#thread > article.msg");
    if (shown.length) event.detail.parameters.after = shown[shown.length - 1].id.slice(4);
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.detail.elt;
    // Only once sent: a refusal (422: too fast, too long, still answering) keeps the draft,
    // and the refusal's message goes (the new turn was appended below it).
    if (form && form.id === "composer" && event.detail.xhr.status === 200) {
      form.reset();
      document.querySelectorAll("#thread > p.error").forEach(function (old) { old.remove(); });
    }
  });
  // A send refused because an answer was being written (another tab's, say) says so until that
  // answer ends: its stream's last swap puts the finished article in, and the reason goes.
  // (htmx:load: afterSwap still sees the old article there.)
  document.addEventListener("htmx:load", function (event) {
    var added = event.target;
    if (!(added instanceof Element) || !added.matches("#thread > article.msg")) return;
    if (document.querySelector("#thread .msg.status-pending, #thread .msg.status-streaming")) return;
    document.querySelectorAll("#thread > p.error[data-until-answered]").forEach(function (moot) {
      moot.remove();
    });
  });
  document.addEventListener("htmx:sseMessage", scrollToEnd);
  document.addEventListener("htmx:afterSwap", scrollToEnd);
  document.addEventListener("DOMContentLoaded", scrollToEnd);
})();
