// Progressive enhancement only: the forms work without it. Shows previews of the chosen
// photos (local blob: URLs, never uploaded before submit), keeps at most data-max of
// them, and disables a form's button while it is being sent.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var input = document.getElementById("photo");
  var previews = document.getElementById("previews");
  if (input && previews) {
    input.addEventListener("change", function () {
      previews.textContent = "";
      var max = Number(input.dataset.max || 3);
      var files = Array.prototype.slice.call(input.files || [], 0, max);
      files.forEach(function (file) {
        if (!file.type || file.type.indexOf("image/") !== 0) { return; }
        var img = document.createElement("img");
        img.alt = "chosen photo";
        img.src = URL.createObjectURL(file);
        img.addEventListener("load", function () { URL.revokeObjectURL(img.src); });
        previews.appendChild(img);
      });
      if ((input.files || []).length > max) {
        var note = document.createElement("p");
        note.className = "error";
        note.textContent = "Only the first " + max + " photos will be sent.";
        previews.appendChild(note);
      }
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("form"), function (form) {
    form.addEventListener("submit", function () {
      var button = form.querySelector("button[type=submit]");
      if (button) { button.disabled = true; button.textContent = "Working\u2026"; }
    });
  });
});
