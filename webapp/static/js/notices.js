// What htmx alone would leave silent: a request that failed on the server or never reached it.
// The reason goes to the page's notice area; the form keeps what was typed.
(function () {
  "use strict";

  function notify(text) {
    var notice = document.getElementById("notice");
    if (notice) notice.textContent = text;
  }

  document.addEventListener("htmx:responseError", function (event) {
    var status = event.detail.xhr.status;
    if (status >= 500) notify("The server failed to do that (error " + status + "). Try again in a moment.");
    else if (status === 403) notify("You are not allowed to do that.");
    else if (status === 404) notify("That is gone: it was deleted, or it is not yours.");
  });
  document.addEventListener("htmx:sendError", function () {
    notify("Could not reach the server: check the connection, then try again.");
  });
  // A request that went through clears an old notice (a 422 may have just set one).
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.xhr.status === 200) notify("");
  });
})();
