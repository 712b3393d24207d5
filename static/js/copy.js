// A "Copy" button on each <pre class="copy">; without JavaScript the text is still there to select by hand.
(function () {
  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    // A panel on plain HTTP has no clipboard API: copy through a selected, hidden textarea instead.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    return copied ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function addButton(block) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary copy-button";
    button.textContent = "Copy";
    button.addEventListener("click", function () {
      copy(block.textContent).then(
        function () { button.textContent = "Copied"; },
        function () { window.getSelection().selectAllChildren(block); button.textContent = "Selected: copy it"; });
      setTimeout(function () { button.textContent = "Copy"; }, 2000);
    });
    const wrapper = document.createElement("div");
    wrapper.className = "copy-wrap";
    block.before(wrapper);
    wrapper.append(block, button);
  }

  document.querySelectorAll("pre.copy").forEach(addButton);
})();
