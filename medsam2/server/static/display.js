// A slice is shown turned as the server's `display` says (transposed, then flipped: see
// medsam2.io.volume.slice_display), so the patient appears as radiologists look at him, while
// prompts and masks keep the slice's own pixel coordinates. These two maps go between the slice's
// pixels (x along a row, y down a column; `rows` x `columns`) and the shown picture's.

export function shownSize(display, rows, columns) {
  return display.transpose ? { rows: columns, columns: rows } : { rows, columns };
}

export function sliceToShown(display, rows, columns, x, y) {
  const shown = shownSize(display, rows, columns);
  const [u, v] = display.transpose ? [y, x] : [x, y];
  return [display.flip_columns ? shown.columns - u : u, display.flip_rows ? shown.rows - v : v];
}

export function shownToSlice(display, rows, columns, u, v) {
  const shown = shownSize(display, rows, columns);
  const [x, y] = [display.flip_columns ? shown.columns - u : u, display.flip_rows ? shown.rows - v : v];
  return display.transpose ? [y, x] : [x, y];
}
