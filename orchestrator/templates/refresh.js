// Brings this page again, drawn by the server, and puts its elements of the
// given ids in place of the old ones, keeping the folds a reader opened. A
// call made while one is under way runs once after it. `after` gets the
// fresh page.
const refresher = (ids, after) => {
  let busy = false;
  let again = false;
  const refresh = async () => {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const answer = await fetch(location.href, { headers: { accept: "text/html" } });
      if (!answer.ok) return;
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const open = [...document.querySelectorAll("[data-fold][aria-expanded=true]")].map((b) => b.dataset.fold);
      for (const id of ids) {
        const fresh = page.getElementById(id);
        if (fresh) document.getElementById(id)?.replaceWith(document.adoptNode(fresh));
      }
      open.forEach((fold) => unfold(fold, true));
      after?.(page);
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  };
  return refresh;
};

// A fold: the button with `data-fold` shows or hides the element it names.
const unfold = (id, open) => {
  const button = document.querySelector(`[data-fold="${id}"]`);
  const rows = document.getElementById(id);
  if (!button || !rows) return;
  rows.hidden = !open;
  button.setAttribute("aria-expanded", String(open));
  button.textContent = open ? button.dataset.less : button.dataset.more;
};
document.addEventListener("click", (clicked) => {
  const button = clicked.target.closest?.("[data-fold]");
  if (button) unfold(button.dataset.fold, button.getAttribute("aria-expanded") !== "true");
});
