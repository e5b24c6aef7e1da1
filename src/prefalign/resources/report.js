// Reads the page only: filters the response cards by text, instruction id and disagreement.
(function () {
  var cards = Array.prototype.slice.call(document.querySelectorAll("#cards .card"));
  var search = document.getElementById("search");
  var instruction = document.getElementById("instruction");
  var differ = document.getElementById("differ");
  var count = document.getElementById("count");
  if (!search) { return; }
  var texts = cards.map(function (card) { return card.textContent.toLowerCase(); });
  function update() {
    var needle = search.value.trim().toLowerCase();
    var id = instruction ? instruction.value : "";
    var onlyDiffer = differ ? differ.checked : false;
    var shown = 0;
    cards.forEach(function (card, i) {
      var ids = " " + card.getAttribute("data-instructions") + " ";
      var visible = (!needle || texts[i].indexOf(needle) !== -1) &&
        (!id || ids.indexOf(" " + id + " ") !== -1) &&
        (!onlyDiffer || card.getAttribute("data-differ") === "1");
      card.hidden = !visible;
      if (visible) { shown += 1; }
    });
    count.textContent = shown + " of " + cards.length + " prompts";
  }
  search.addEventListener("input", update);
  if (instruction) { instruction.addEventListener("change", update); }
  if (differ) { differ.addEventListener("change", update); }
  update();
})();
