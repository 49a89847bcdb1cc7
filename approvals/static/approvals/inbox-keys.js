// The inbox list's keyboard shortcuts and "Select all on this page". The page works without
// this file (links, checkboxes, the bulk form); it only adds shortcuts. No key decides
// anything: "a" and "r" open a confirmation dialog, and only its button posts the decision
// (the same form as the request's page, with "next" leading back to this list).
(function () {
  "use strict";
  var list = document.querySelector("ul.requests");
  var rows = list ? Array.prototype.slice.call(list.querySelectorAll("li.request")) : [];
  if (!rows.length) return;

  var tools = document.querySelector("[data-list-tools]");
  if (tools) tools.hidden = false;

  // -- select all on this page --------------------------------------------------------------

  // The page's language: the template writes each sentence, translated, on #keys-text.
  var texts = document.getElementById("keys-text");
  function text(key, fallback, values) {
    var found = (texts && texts.dataset[key]) || fallback;
    Object.keys(values || {}).forEach(function (name) { found = found.replace("{" + name + "}", function () { return values[name]; }); });
    return found;
  }

  var selectAll = document.getElementById("select-all");
  var selectedCount = document.getElementById("selected-count");
  var boxes = Array.prototype.slice.call(list.querySelectorAll('input[type="checkbox"][name="ids"]'));

  function showSelection() {
    if (!selectAll) return;
    var ticked = boxes.filter(function (box) { return box.checked; }).length;
    selectAll.checked = ticked > 0 && ticked === boxes.length;
    selectAll.indeterminate = ticked > 0 && ticked < boxes.length;
    selectedCount.textContent = text("selected", "{n} selected", { n: String(ticked) });
  }

  if (selectAll) {
    selectAll.addEventListener("change", function () {
      boxes.forEach(function (box) { box.checked = selectAll.checked; });
      showSelection();
    });
    list.addEventListener("change", showSelection);
    // A refused bulk decision comes back with its ticks kept; "Back" may restore ticks too.
    window.addEventListener("pageshow", showSelection);
    showSelection();
  }

  // -- the current row ------------------------------------------------------------------------

  var current = -1;
  var notice = document.getElementById("keys-notice");
  var noticeTimer = null;

  function mark(index) {
    if (current >= 0 && rows[current]) {
      rows[current].classList.remove("is-current");
      rows[current].removeAttribute("aria-current");
    }
    current = index;
    rows[current].classList.add("is-current");
    rows[current].setAttribute("aria-current", "true");
  }

  function move(step) {
    var index = current < 0 ? 0 : Math.min(Math.max(current + step, 0), rows.length - 1);
    mark(index);
    rows[index].scrollIntoView({ block: "nearest" });
    var link = rows[index].querySelector(".request-title");
    if (link) link.focus({ preventScroll: true }); // screen readers follow the focus
  }

  // Tabbing or clicking into a row makes it the current one.
  list.addEventListener("focusin", function (event) {
    var row = event.target.closest("li.request");
    var index = rows.indexOf(row);
    if (index >= 0 && index !== current) mark(index);
  });

  function say(text) {
    if (!notice) return;
    notice.textContent = text;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(function () { notice.textContent = ""; }, 4000);
  }

  function currentRow() {
    if (current < 0) {
      say(text("chooseFirst", "Press j to choose a request first"));
      return null;
    }
    return rows[current];
  }

  // -- the dialogs ----------------------------------------------------------------------------

  // A dialog lives in a <template> until a key asks for it, and goes when it closes (Escape,
  // Cancel, Close): no hidden form waits in the page. "prepare" fills it in before it shows,
  // so a screen reader announces the finished dialog.
  function showDialog(templateId, prepare) {
    var template = document.getElementById(templateId);
    if (!template) return;
    var dialog = template.content.firstElementChild.cloneNode(true);
    // A dialog closed a moment ago may still wait for its "close" event (a queued task):
    // never two with one id.
    var stale = dialog.id ? document.getElementById(dialog.id) : null;
    if (stale) stale.remove();
    document.body.appendChild(dialog);
    dialog.addEventListener("close", function () { dialog.remove(); });
    var focus = prepare ? prepare(dialog) : null;
    dialog.showModal();
    if (focus) focus.focus();
  }

  function label(row) {
    return "#" + row.getAttribute("data-request") + " “" + row.getAttribute("data-title") + "”";
  }

  function ask(row, outcome) {
    var url = row.getAttribute("data-decide-url");
    if (!url) {
      say(text("cannotDecide", "You cannot decide this request here"));
      return;
    }
    var approve = outcome === "approve";
    var needsComment = !approve && row.getAttribute("data-reject-needs-comment") === "true";
    showDialog("decide-template", function (dialog) {
      return fill(dialog, row, url, approve, needsComment);
    });
  }

  function fill(dialog, row, url, approve, needsComment) {
    var form = dialog.querySelector("form");
    var comment = form.elements.comment;
    var confirm = dialog.querySelector("#decide-confirm");
    form.setAttribute("action", url);
    form.elements.outcome.value = approve ? "approve" : "reject";
    dialog.querySelector("#decide-heading").textContent =
      approve
        ? text("approveTitle", "Approve {title}?", { title: label(row) })
        : text("rejectTitle", "Reject {title}?", { title: label(row) });
    confirm.textContent = approve ? text("approve", "Approve") : text("reject", "Reject");
    confirm.className = "btn " + (approve ? "btn-approve" : "btn-reject");
    dialog.querySelector("#decide-rule").hidden = !needsComment;
    dialog.querySelector("#decide-comment-hint").textContent =
      needsComment ? text("required", "(required to reject)") : text("optional", "(optional)");
    comment.required = needsComment;
    var sending = false;
    form.addEventListener("submit", function (event) {
      if (event.submitter && event.submitter.getAttribute("formmethod") === "dialog") return;
      if (sending) event.preventDefault(); // one decision per dialog, however many presses
      sending = true;
    });
    return approve ? confirm : comment;
  }

  function open(row) {
    var link = row.querySelector(".request-title");
    if (link) window.location.assign(link.href);
  }

  function toggle(row) {
    var box = row.querySelector('input[type="checkbox"][name="ids"]');
    if (box) box.click(); // fires "change": the count follows
    else say(text("cannotSelect", "This request cannot be selected here"));
  }

  // -- keys -------------------------------------------------------------------------------------

  function typing(target) {
    if (!target || !target.closest) return false;
    if (target.isContentEditable) return true;
    var field = target.closest("input, textarea, select");
    if (!field) return false;
    // A checkbox or a button takes no text: j/k go on working after a click on a tick box.
    return !/^(checkbox|radio|button|submit|reset)$/.test(field.type);
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.isComposing) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (typing(event.target) || document.querySelector("dialog[open]")) return;
    var key = event.key;
    if (key === "?") {
      event.preventDefault();
      showDialog("keys-help-template");
      return;
    }
    if (event.shiftKey) return;
    var row;
    switch (key) {
      case "j":
        move(1);
        break;
      case "k":
        move(-1);
        break;
      case "Enter":
        // A focused link or button does its own thing (the current row's title is a link).
        if (event.target.closest("a, button, summary, input")) return;
        if ((row = currentRow())) open(row);
        break;
      case "o":
        if ((row = currentRow())) open(row);
        break;
      case "x":
        if ((row = currentRow())) toggle(row);
        break;
      case "a":
        if ((row = currentRow())) ask(row, "approve");
        break;
      case "r":
        if ((row = currentRow())) ask(row, "reject");
        break;
      default:
        return;
    }
    event.preventDefault();
  });
})();
