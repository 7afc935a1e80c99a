// The upload page without reloads: preview, classify via POST /uploads, report via /feedback.
// The page works without this script; every element it uses is rendered by the server.
"use strict";

(function () {
  const uploadForm = document.getElementById("upload");
  const fileInput = document.getElementById("file");
  const dropzone = uploadForm.querySelector(".dropzone");
  const submitButton = uploadForm.querySelector("button[type=submit]");
  const result = document.getElementById("result");
  const photo = document.getElementById("photo");
  const photoName = document.getElementById("photo-name");
  const predictions = document.getElementById("predictions");
  const feedbackForm = document.getElementById("feedback");
  const feedbackButton = feedbackForm.querySelector("button[type=submit]");
  const messages = document.getElementById("messages");
  const maxBytes = Number(uploadForm.dataset.maxBytes);
  let previewUrl = null;

  function say(text, kind) {
    messages.replaceChildren();
    if (!text) return;
    const line = document.createElement("p");
    line.className = kind === "error" ? "message message-error" : "message message-ok";
    line.dataset.kind = kind;
    line.textContent = text;
    messages.append(line);
  }

  function percent(score) {
    return (score * 100).toFixed(1) + "%";
  }

  function showPredictions(items) {
    predictions.replaceChildren();
    for (const item of items) {
      const row = document.createElement("li");
      row.className = "prediction";
      const label = document.createElement("span");
      label.className = "prediction-label";
      label.textContent = item.label;
      const score = document.createElement("span");
      score.className = "prediction-score";
      score.textContent = percent(item.score);
      const bar = document.createElement("progress");
      bar.className = "bar";
      bar.max = 1;
      bar.value = item.score;
      bar.setAttribute("aria-hidden", "true");
      row.append(label, score, bar);
      predictions.append(row);
    }
  }

  async function detailOf(response) {
    try {
      const body = await response.json();
      if (body && typeof body.detail === "string") return body.detail;
    } catch (_) {
      // not JSON: fall through to the status line
    }
    return "the server answered " + response.status;
  }

  async function classify(file) {
    if (!file) {
      say("Choose a photo first, then press Classify.", "error");
      return;
    }
    if (file.size === 0) {
      say("That file is empty. Choose a photo.", "error");
      return;
    }
    if (file.size > maxBytes) {
      say("That photo is too large: at most " + uploadForm.dataset.maxText + ".", "error");
      return;
    }
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    photo.src = previewUrl;
    photo.alt = "Your photo: " + file.name;
    photoName.textContent = file.name;
    predictions.replaceChildren();
    feedbackForm.hidden = true;
    result.hidden = false;
    result.setAttribute("aria-busy", "true");
    submitButton.disabled = true;
    say("Classifying…", "notice");

    const body = new FormData();
    body.append("file", file, file.name);
    try {
      const response = await fetch("/uploads", {
        method: "POST",
        body: body,
        headers: { Accept: "application/json" },
      });
      if (!response.ok) {
        const why = await detailOf(response);
        say(
          response.status >= 500
            ? "The server is busy or unwell (" + why + "). Try again in a moment."
            : "That file cannot be classified: " + why + ".",
          "error",
        );
        result.hidden = true;
        return;
      }
      const answer = await response.json();
      showPredictions(answer.predictions);
      const best = answer.predictions[0];
      feedbackForm.elements.image.value = answer.image;
      feedbackForm.elements.prediction.value = best.label;
      feedbackForm.elements.score.value = best.score.toFixed(4);
      feedbackForm.elements.correct_label.value = "";
      feedbackButton.disabled = false;
      feedbackButton.textContent = "This is wrong";
      feedbackForm.hidden = false;
      say("", "notice");
    } catch (error) {
      say("The server could not be reached. Try again.", "error");
      result.hidden = true;
    } finally {
      result.removeAttribute("aria-busy");
      submitButton.disabled = false;
    }
  }

  async function report(event) {
    event.preventDefault();
    feedbackButton.disabled = true;
    const body = new URLSearchParams(new FormData(feedbackForm));
    try {
      const response = await fetch("/feedback", {
        method: "POST",
        body: body,
        headers: { Accept: "application/json" },
      });
      if (!response.ok) {
        say("Your report was not saved: " + (await detailOf(response)) + ".", "error");
        feedbackButton.disabled = false;
        return;
      }
      say("Thank you — your report was saved.", "notice");
      // The message sits at the top; on a phone the button is what the person is looking at.
      feedbackButton.textContent = "Report saved ✓";
    } catch (error) {
      say("The server could not be reached. Try again.", "error");
      feedbackButton.disabled = false;
    }
  }

  uploadForm.addEventListener("submit", function (event) {
    event.preventDefault();
    classify(fileInput.files[0]);
  });
  fileInput.addEventListener("change", function () {
    if (fileInput.files.length) classify(fileInput.files[0]);
  });
  feedbackForm.addEventListener("submit", report);

  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, function (event) {
      event.preventDefault();
      dropzone.classList.add("is-dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    dropzone.addEventListener(name, function () {
      dropzone.classList.remove("is-dragging");
    });
  }
  dropzone.addEventListener("drop", function (event) {
    event.preventDefault();
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    fileInput.files = files;
    classify(files[0]);
  });
})();
