// django-jsonform draws its fields without tying each label to its input: tie them (id/for,
// and the help text as the description) so screen readers and label clicks work. The widget
// redraws on every change, so this runs again after each redraw.
(function () {
  "use strict";
  function tie(container) {
    var rows = container.querySelectorAll(".rjf-form-row-inner > div");
    rows.forEach(function (row, index) {
      var label = row.querySelector(":scope > label");
      var control = row.querySelector(".rjf-input-group input, .rjf-input-group select, .rjf-input-group textarea");
      if (!label || !control) return;
      if (!control.id) control.id = "rjf-field-" + index;
      if (label.htmlFor !== control.id) label.htmlFor = control.id;
      var help = row.querySelector(".rjf-help-text");
      if (help) {
        if (!help.id) help.id = control.id + "-help";
        control.setAttribute("aria-describedby", help.id);
      }
      var error = row.querySelector(".rjf-error-text");
      if (error) control.setAttribute("aria-invalid", "true");
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-django-jsonform-container]").forEach(function (container) {
      tie(container);
      new MutationObserver(function () { tie(container); }).observe(container, { childList: true, subtree: true });
    });
  });
})();
