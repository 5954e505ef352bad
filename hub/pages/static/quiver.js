// Copy buttons for the snippets. Reading works without JavaScript; this only adds convenience.
document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const target = document.getElementById(button.dataset.target);
  if (target && navigator.clipboard) {
    navigator.clipboard.writeText(target.innerText).then(() => { button.textContent = "copied"; });
  }
});
