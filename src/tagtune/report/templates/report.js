"use strict";
const store = (key, value) => {
  try {
    if (value === undefined) return sessionStorage.getItem(key) || "";
    sessionStorage.setItem(key, value);
  } catch (err) {
    return "";  // storage refused (some file:// settings): filters simply start empty
  }
  return "";
};
// Table filters: rows whose text does not contain the typed words are hidden.
for (const input of document.querySelectorAll("input[data-filter]")) {
  const table = document.getElementById(input.dataset.filter);
  const count = document.querySelector(`[data-count-for="${input.dataset.filter}"]`);
  const apply = () => {
    const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const row of table.tBodies[0].rows) {
      const text = row.textContent.toLowerCase();
      row.hidden = !words.every((w) => text.includes(w));
      if (!row.hidden) shown += 1;
    }
    if (count) count.textContent = `${shown} of ${table.tBodies[0].rows.length} rows shown`;
    store(`filter:${input.dataset.filter}`, input.value);
  };
  input.value = store(`filter:${input.dataset.filter}`);
  input.addEventListener("input", apply);
  apply();
}
// Watch mode: reload when the next rewrite is due (the browser keeps the scroll position).
const every = Number(document.body.dataset.refresh);
if (every > 0) setTimeout(() => location.reload(), every * 1000);
