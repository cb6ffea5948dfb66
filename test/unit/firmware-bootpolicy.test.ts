/** Boot-order policy helpers (Set-VMFirmware -FirstBootDevice / -BootOrder). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { applyBootOrder, BootError, freeBootNumbers, moveFirst, nextFreeBootNumber } from "../../src/firmware/index.js";

test("moveFirst keeps the others in order", () => {
  assert.deepEqual(moveFirst([0, 1, 2, 3], 2), [2, 0, 1, 3]);
  assert.deepEqual(moveFirst([0, 1, 2], 0), [0, 1, 2]);
  assert.deepEqual(moveFirst([0, 1], 7), [7, 0, 1], "an entry missing from BootOrder is put first");
  assert.throws(() => moveFirst([0], -1), BootError);
});

test("applyBootOrder: left-out entries move to the end by default", () => {
  const r = applyBootOrder([0, 1, 2, 3, 4, 5, 6], [2, 1]);
  assert.deepEqual(r.order, [2, 1, 0, 3, 4, 5, 6]);
  assert.deepEqual(r.movedToEnd, [0, 3, 4, 5, 6]);
  assert.deepEqual(r.pruned, []);
});

test("applyBootOrder with prune (Hyper-V semantics) keeps File entries and says so", () => {
  const r = applyBootOrder([7, 0, 1, 2, 3], [2], { prune: true, fileEntries: [7] });
  assert.deepEqual(r.order, [2, 7]);
  assert.deepEqual(r.pruned, [0, 1, 3]);
  assert.deepEqual(r.keptFiles, [7]);
  const all = applyBootOrder([7, 0, 1, 2, 3], [2], { prune: true, fileEntries: [7], pruneFiles: true });
  assert.deepEqual(all.order, [2]);
  assert.deepEqual(all.pruned, [7, 0, 1, 3]);
  assert.deepEqual(all.prunedFiles, [7]);
});

test("applyBootOrder rejects duplicates and unknown entries", () => {
  assert.throws(() => applyBootOrder([0, 1], [1, 1]), (e: unknown) => e instanceof BootError && e.code === "DUPLICATE_ENTRY");
  assert.throws(() => applyBootOrder([0, 1], [5], { existing: [0, 1] }), (e: unknown) => e instanceof BootError && e.code === "UNKNOWN_ENTRY");
  assert.deepEqual(applyBootOrder([0, 1], [5], { existing: [0, 1, 5] }).order, [5, 0, 1], "an orphan Boot#### can be ordered");
  assert.deepEqual(applyBootOrder([0, 0, 1], [1]).order, [1, 0], "duplicates in the current order collapse");
});

test("free Boot#### numbers", () => {
  assert.equal(nextFreeBootNumber([0, 1, 2, 4]), 3);
  assert.equal(nextFreeBootNumber([]), 0);
  assert.equal(nextFreeBootNumber([0, 1], 0x10), 0x10);
  assert.deepEqual(freeBootNumbers([0, 2, 3], 3), [1, 4, 5]);
  const all = Array.from({ length: 0x10000 }, (_, i) => i);
  assert.throws(() => nextFreeBootNumber(all), (e: unknown) => e instanceof BootError && e.code === "NO_FREE_NUMBER");
  assert.throws(() => freeBootNumbers(all.slice(1), 2), BootError);
});

test("applyBootOrder with prune keeps what the caller says must stay (entries the firmware re-creates), in their order", () => {
  const r = applyBootOrder([0, 1, 2, 3, 4, 5, 6], [2], { prune: true, keepOnPrune: [6, 0], fileEntries: [4] });
  assert.deepEqual(r.order, [2, 0, 4, 6]);
  assert.deepEqual(r.kept, [0, 6]);
  assert.deepEqual(r.keptFiles, [4]);
  assert.deepEqual(r.pruned, [1, 3, 5]);
  assert.deepEqual(applyBootOrder([0, 1, 2], [2], { keepOnPrune: [0] }).kept, [], "without prune nothing is 'kept': all move");
});
