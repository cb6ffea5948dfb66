/**
 * Property-based tests (fast-check): random and mutated stores, device paths, text and load
 * options give results or typed errors (FirmwareError), never a crash; everything that
 * parses round-trips exactly; store writes match a model, compaction keeps every live
 * variable; boot-policy invariants. The runs below total well over 100,000 cases; the last
 * test checks the sum.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  applyBootOrder, decodeLoadOption, describeBootOption, devicePathFromText, devicePathToText, EMPTY_LAYOUT, encodeDevicePath,
  encodeLoadOption, FirmwareError, guidToBytes, guidToString, listBootOptionIds, loadOptionPaths, nextFreeBootNumber,
  parseDevicePath, parseVarStore, readBootConfiguration, readBootOptionBytes, VarStoreError, decodeUcs2, encodeUcs2,
  VARIABLE_ATTRIBUTE as VA, GUIDS, type DevicePathNode,
} from "../../src/firmware/index.js";
import { BOOTED_STORES, buildVarStoreImage, fixture, PRISTINE_FIXTURES } from "../fixtures/firmware/helpers.js";

let totalRuns = 0;
function check<T>(name: string, arb: fc.Arbitrary<T>, numRuns: number, body: (v: T) => void): void {
  test(`property: ${name} (${numRuns} runs)`, () => {
    fc.assert(fc.property(arb, body), { numRuns });
  });
  totalRuns += numRuns;
}

/** Runs fn; a thrown error must be one of ours. Returns undefined when it threw. */
function typed<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (e) {
    if (e instanceof FirmwareError) return undefined;
    throw e;
  }
}

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.length), Buffer.from(b.buffer, b.byteOffset, b.length)) === 0;

// ---- corpora from the real stores ------------------------------------------------------------

const STORES = [...BOOTED_STORES, ...PRISTINE_FIXTURES].map((n) => parseVarStore(fixture(n)));
const OPTIONS: Uint8Array[] = STORES.flatMap((s) => listBootOptionIds(s).map((id) => readBootOptionBytes(s, id)!));
const NODES: DevicePathNode[] = [];
for (const raw of OPTIONS) for (const p of loadOptionPaths(decodeLoadOption(raw))) for (const n of p) if (n.type !== 0x7f) NODES.push(n);
for (const s of STORES) for (const v of ["ConIn", "ConOut", "ErrOut"]) {
  const d = s.get(v, GUIDS.globalVariable);
  if (d !== undefined) for (const n of parseDevicePath(d.data)) if (n.type !== 0x7f) NODES.push(n);
}

/** A node from the corpus, possibly mutated: bytes changed, cut, extended, type/subtype changed. */
const nodeArb: fc.Arbitrary<DevicePathNode> = fc
  .tuple(
    fc.integer({ min: 0, max: NODES.length - 1 }),
    fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 3 }),
    fc.oneof(fc.constant(0), fc.integer({ min: -4, max: 4 })),
    fc.oneof({ weight: 6, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 })) }),
  )
  .map(([i, flips, grow, retype]) => {
    const base = NODES[i]!;
    let data = base.data.slice();
    for (const [at, v] of flips) if (data.length > 0) data[at % data.length] = v;
    if (grow < 0) data = data.slice(0, Math.max(0, data.length + grow));
    else if (grow > 0) data = Uint8Array.from([...data, ...new Array<number>(grow).fill(grow * 17)]);
    const [type, subType] = retype ?? [base.type, base.subType];
    return { type: type === 0x7f && subType === 0xff ? 0x7e : type, subType, data };
  });

/** A node of a known type with a random body: every decoder meets random content. */
const randomNodeArb: fc.Arbitrary<DevicePathNode> = fc.record({
  type: fc.oneof({ weight: 9, arbitrary: fc.integer({ min: 1, max: 5 }) }, { weight: 1, arbitrary: fc.constantFrom(0, 6, 0x7f, 0xff) }),
  subType: fc.oneof({ weight: 9, arbitrary: fc.integer({ min: 0, max: 32 }) }, { weight: 1, arbitrary: fc.constantFrom(0xff, 0x80) }),
  data: fc.uint8Array({ maxLength: 64 }),
}).map((n) => (n.type === 0x7f && n.subType === 0xff ? { ...n, type: 0x7e } : n));

const pathArb: fc.Arbitrary<Uint8Array> = fc
  .array(
    fc.oneof(
      { weight: 6, arbitrary: nodeArb },
      { weight: 3, arbitrary: randomNodeArb },
      { weight: 1, arbitrary: fc.constant({ type: 0x7f, subType: 1, data: new Uint8Array(0) }) },
    ),
    { minLength: 1, maxLength: 6 },
  )
  .map((nodes) => encodeDevicePath([...nodes, { type: 0x7f, subType: 0xff, data: new Uint8Array(0) }]));

function checkPathRoundTrip(bytes: Uint8Array): void {
  const path = typed(() => parseDevicePath(bytes));
  if (path === undefined) return;
  assert.ok(sameBytes(encodeDevicePath(path), bytes));
  typed(() => devicePathToText(path, { displayOnly: true }));
  typed(() => devicePathToText(path, { exact: false, allowShortcuts: true }));
  for (const opts of [{}, { allowShortcuts: true }]) {
    const text = devicePathToText(path, opts);
    if (path.length === 1) continue; // only the End node: empty text
    const back = devicePathFromText(text);
    assert.ok(sameBytes(encodeDevicePath(back), bytes), `${text}`);
    assert.equal(devicePathToText(back, opts), text);
  }
}

check("random bytes as a device path", fc.uint8Array({ maxLength: 96 }), 20_000, (b) => {
  checkPathRoundTrip(b);
  // Bytes ending in a proper End node reach the node decoders more often.
  checkPathRoundTrip(Uint8Array.from([...b.slice(0, 60), 0x7f, 0xff, 4, 0]));
});

check("mutated real nodes: binary -> text -> binary is exact", pathArb, 25_000, checkPathRoundTrip);

// ---- text ------------------------------------------------------------------------------------

const TOKENS = [
  "PciRoot(", "Pci(", "Scsi(", "Sata(", "NVMe(", "MAC(", "IPv4(", "IPv6(", "Uri(", "HD(", "Fv(", "FvFile(", "VenHw(", "VenMsg(",
  "VenPcAnsi()", "Uart(", "USB(", "AcpiEx(", "AcpiExp(", "Acpi(", "Msg(", "Path(", "MediaPath(", "UsbWwid(", "Dns(", "Wi-Fi(",
  "BBS(", "Ata(", "UartFlowCtrl(", "GPT", "MBR", "DHCP", "Static", "TCP", "UDP", "DEFAULT", "PNP0A03", "@@@0000",
  "0x", "0", "1", "7F", "FF", "12", "-", ":", "::", ".", ",", "/", "(", ")", "\\", "\\EFI", '"', " ", "x", "\u00e9", "\u20ac",
  "7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1", "192.168.0.1", "fe80::1", "00155D000001", "-1", "99999999999999999999",
];
const textArb = fc.array(fc.constantFrom(...TOKENS), { maxLength: 14 }).map((t) => t.join(""));

check("random text: parses or fails with a typed error; what parses round-trips", textArb, 15_000, (text) => {
  const path = typed(() => devicePathFromText(text));
  if (path === undefined) return;
  const bytes = encodeDevicePath(path);
  const printed = devicePathToText(path);
  assert.ok(sameBytes(encodeDevicePath(devicePathFromText(printed)), bytes), `${text} -> ${printed}`);
});

const hexN = (n: number): fc.Arbitrary<string> => fc.integer({ min: 0, max: 2 ** Math.min(n, 31) - 1 }).map((v) => "0x" + v.toString(16).toUpperCase());
const guidArb = fc.uuid().map((u) => u.toUpperCase());
const ip4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((a) => a.join("."));
const validNodeText = fc.oneof(
  fc.tuple(hexN(5), hexN(3)).map(([d, f]) => `Pci(${d},${f})`),
  hexN(31).map((u) => `PciRoot(${u})`),
  fc.tuple(hexN(16), hexN(16)).map(([p, l]) => `Scsi(${p},${l})`),
  fc.tuple(hexN(16), hexN(16), hexN(16)).map(([a, b, c]) => `Sata(${a},${b},${c})`),
  fc.tuple(fc.uint8Array({ minLength: 6, maxLength: 6 }), fc.constantFrom("0x0", "0x1")).map(([m, t]) => `MAC(${Buffer.from(m).toString("hex").toUpperCase()},${t})`),
  fc.tuple(ip4, fc.constantFrom("TCP", "UDP", "0x0"), fc.constantFrom("DHCP", "Static"), ip4, ip4, ip4).map((a) => `IPv4(${a.join(",")})`),
  fc.tuple(fc.ipV6(), fc.constantFrom("StatelessAutoConfigure", "Static", "StatefulAutoConfigure"), fc.ipV6(), fc.nat(128)).map(
    ([r, o, l, p]) => `IPv6(${r},UDP,${o},${l},0x${p.toString(16)},::)`,
  ),
  fc.webUrl().map((u) => `Uri(${u})`),
  fc.tuple(fc.integer({ min: 1, max: 128 }), guidArb, hexN(31), hexN(31)).map(([n, g, s, z]) => `HD(${n},GPT,${g},${s},${z})`),
  fc.tuple(fc.integer({ min: 1, max: 4 }), hexN(31), hexN(31), hexN(31)).map(([n, g, s, z]) => `HD(${n},MBR,${g},${s},${z})`),
  guidArb.map((g) => `Fv(${g})`),
  guidArb.map((g) => `FvFile(${g})`),
  fc.tuple(guidArb, fc.uint8Array({ maxLength: 8 })).map(([g, d]) => `VenHw(${g}${d.length ? "," + Buffer.from(d).toString("hex") : ""})`),
  fc.constantFrom("VenPcAnsi()", "VenVt100()", "VenVt100Plus()", "VenUtf8()", "UartFlowCtrl(None)", "UartFlowCtrl(XonXoff)"),
  fc.tuple(fc.constantFrom("115200", "9600", "DEFAULT"), fc.constantFrom("8", "7", "DEFAULT"), fc.constantFrom("N", "E", "O", "D"), fc.constantFrom("1", "1.5", "2", "D")).map(
    (a) => `Uart(${a.join(",")})`,
  ),
  fc.tuple(hexN(8), hexN(8)).map(([a, b]) => `USB(${a},${b})`),
  fc.tuple(hexN(31), fc.uint8Array({ minLength: 8, maxLength: 8 })).map(([n, e]) => `NVMe(${n},${Array.from(e, (b) => b.toString(16).padStart(2, "0")).join("-")})`),
  fc.array(fc.stringMatching(/^[A-Za-z0-9_. ]{1,12}$/), { minLength: 1, maxLength: 4 }).map((parts) => "\\" + parts.join("\\")),
  fc.tuple(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 10 })).map(([s, d]) => `Msg(${s}${d.length ? "," + Buffer.from(d).toString("hex") : ""})`),
);
const validPathText = fc.array(fc.tuple(validNodeText, fc.constantFrom("/", "/", "/", ",")), { minLength: 1, maxLength: 6 }).map((ns) =>
  ns.map(([n, sep], i) => (i === 0 ? n : sep + n)).join(""),
);

check("valid text: text -> binary -> text -> binary is stable", validPathText, 10_000, (text) => {
  const path = devicePathFromText(text);
  const printed = devicePathToText(path);
  const again = devicePathFromText(printed);
  assert.ok(sameBytes(encodeDevicePath(again), encodeDevicePath(path)), `${text} -> ${printed}`);
  assert.equal(devicePathToText(again), printed);
});

// ---- load options ----------------------------------------------------------------------------

const optionArb = fc.oneof(
  fc.uint8Array({ maxLength: 120 }),
  fc
    .tuple(fc.integer({ min: 0, max: OPTIONS.length - 1 }), fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 4 }), fc.integer({ min: -8, max: 8 }))
    .map(([i, flips, cut]) => {
      const b = OPTIONS[i]!.slice();
      for (const [at, v] of flips) b[at % b.length] = v;
      return cut < 0 ? b.slice(0, b.length + cut) : Uint8Array.from([...b, ...new Array<number>(cut).fill(0)]);
    }),
);

check("random and mutated load options", optionArb, 15_000, (bytes) => {
  const o = typed(() => decodeLoadOption(bytes));
  if (o !== undefined) {
    assert.ok(sameBytes(encodeLoadOption(o), bytes));
    const paths = typed(() => loadOptionPaths(o));
    if (paths !== undefined) for (const p of paths) devicePathToText(p);
  }
  const e = describeBootOption(1, bytes, EMPTY_LAYOUT, true);
  assert.ok(["Drive", "Network", "File", "Firmware", "Unknown"].includes(e.type));
  assert.equal(e.type === "Unknown", e.error !== null);
});

// ---- stores ----------------------------------------------------------------------------------

const STORE2M = fixture("ovmf2m.fd");
const usedEnd = (() => {
  const s = parseVarStore(STORE2M);
  return s.layout.variablesEnd - s.freeBytes() + 64;
})();
const storeMutationArb = fc.array(
  fc.tuple(
    fc.oneof({ weight: 2, arbitrary: fc.integer({ min: 0, max: 0x70 }) }, { weight: 5, arbitrary: fc.integer({ min: 0x64, max: usedEnd }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: STORE2M.length - 1 }) }),
    fc.oneof(fc.nat(255), fc.constantFrom(0, 0xff, 0x3f, 0x3e, 0x3c, 0x7f, 0xaa, 0x55)),
  ),
  { minLength: 1, maxLength: 4 },
);

check("mutated stores: VarStoreError or an exact round trip; reading entries never crashes", fc.tuple(storeMutationArb, fc.boolean()), 12_000, ([muts, truncate]) => {
  let b = STORE2M.slice();
  for (const [at, v] of muts) b[at] = v;
  if (truncate) b = b.slice(0, muts[0]![0] + 40);
  let s;
  try {
    s = parseVarStore(b);
  } catch (e) {
    assert.ok(e instanceof VarStoreError, String(e));
    return;
  }
  assert.ok(sameBytes(s.toBuffer(), b));
  s.list();
  const cfg = readBootConfiguration(s, EMPTY_LAYOUT);
  for (const e of cfg.entries) assert.equal(typeof e.firmwarePath, "string");
});

const G = "0ea85f0a-0000-4000-8000-00000000abcd";
type Op =
  | { op: "set"; name: string; size: number; fill: number; append: boolean }
  | { op: "delete"; name: string }
  | { op: "compact" }
  | { op: "reparse" };
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 8, arbitrary: fc.record({ op: fc.constant("set" as const), name: fc.constantFrom("A", "B", "C", "D", "Boot0001", "LongVariableName"), size: fc.integer({ min: 0, max: 300 }), fill: fc.nat(255), append: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("delete" as const), name: fc.constantFrom("A", "B", "C", "D", "Boot0001", "LongVariableName") }) },
  { weight: 1, arbitrary: fc.constant({ op: "compact" as const }) },
  { weight: 1, arbitrary: fc.constant({ op: "reparse" as const }) },
);

check("store writes follow a model; STORE_FULL changes nothing; other areas untouched", fc.tuple(fc.integer({ min: 600, max: 3000 }), fc.array(opArb, { maxLength: 40 })), 2_000, ([region, ops]) => {
  const img = buildVarStoreImage(region, 300);
  let s = parseVarStore(img);
  const { variablesStart, variablesEnd } = s.layout;
  const model = new Map<string, Uint8Array>();
  for (const o of ops) {
    if (o.op === "set") {
      const data = new Uint8Array(o.size).fill(o.fill);
      const before = s.toBuffer();
      try {
        s.set(o.name, G, 7 | (o.append ? VA.APPEND_WRITE : 0), data);
        const prev = model.get(o.name);
        if (o.append) {
          if (data.length > 0 || prev !== undefined) model.set(o.name, Uint8Array.from([...(prev ?? []), ...data]));
        } else if (data.length === 0) model.delete(o.name);
        else model.set(o.name, data);
      } catch (e) {
        assert.ok(e instanceof VarStoreError && e.code === "STORE_FULL", String(e));
        assert.ok(sameBytes(s.toBuffer(), before), "a failed set leaves the store unchanged");
      }
    } else if (o.op === "delete") {
      assert.equal(s.delete(o.name, G), model.delete(o.name));
    } else if (o.op === "compact") s.compact();
    else s = parseVarStore(s.toBuffer());
    const got = new Map(s.list().map((v) => [v.name, v.data]));
    assert.equal(got.size, model.size);
    for (const [k, v] of model) assert.ok(got.has(k) && sameBytes(got.get(k)!, v), k);
    assert.ok(s.freeBytes() >= 0);
  }
  const out = s.toBuffer();
  assert.ok(sameBytes(out.subarray(0, variablesStart), img.subarray(0, variablesStart)));
  assert.ok(sameBytes(out.subarray(variablesEnd), img.subarray(variablesEnd)));
});

check("a store filled until compaction keeps every live variable", fc.tuple(fc.integer({ min: 800, max: 4000 }), fc.array(fc.tuple(fc.integer({ min: 0, max: 15 }), fc.integer({ min: 1, max: 200 })), { minLength: 20, maxLength: 120 })), 1_000, ([region, writes]) => {
  const s = parseVarStore(buildVarStoreImage(region));
  const model = new Map<string, number>();
  let compacted = false;
  for (const [i, size] of writes) {
    const name = `Var${i}`;
    try {
      const r = s.set(name, G, 7, new Uint8Array(size).fill(size & 0xff));
      model.set(name, size);
      if (r.compacted) {
        compacted = true;
        for (const [k, n] of model) assert.equal(s.get(k, G)?.data.length, n, `${k} after compaction`);
        assert.equal(s.records().length, model.size, "only live records remain after compaction");
      }
    } catch (e) {
      assert.ok(e instanceof VarStoreError && e.code === "STORE_FULL");
    }
  }
  const re = parseVarStore(s.toBuffer());
  assert.equal(re.list().length, model.size);
  for (const [k, n] of model) assert.equal(re.get(k, G)?.data.length, n);
  void compacted;
});

// ---- small codecs and policy -----------------------------------------------------------------

check("GUID text <-> bytes", fc.uint8Array({ minLength: 16, maxLength: 16 }), 5_000, (b) => {
  const t = guidToString(b);
  assert.ok(sameBytes(guidToBytes(t), b));
  assert.ok(sameBytes(guidToBytes(t.toUpperCase()), b));
});

check("UCS-2 decode/encode is lossless for any even byte string", fc.uint8Array({ maxLength: 64 }).map((b) => b.slice(0, b.length & ~1)), 5_000, (b) => {
  assert.ok(sameBytes(encodeUcs2(decodeUcs2(b), false), b));
});

const orderArb = fc.uniqueArray(fc.integer({ min: 0, max: 40 }), { maxLength: 15 }).chain((current) =>
  fc.tuple(
    fc.constant(current),
    fc.shuffledSubarray([...current, 41, 42]),
    fc.subarray(current),
    fc.boolean(),
    fc.boolean(),
    fc.subarray(current),
  ),
);

check("boot policy: applyBootOrder invariants, free numbers", orderArb, 10_000, ([current, requested, files, prune, pruneFiles, keep]) => {
  const r = applyBootOrder(current, requested, { prune, fileEntries: files, pruneFiles, keepOnPrune: keep });
  assert.deepEqual(r.order.slice(0, requested.length), requested);
  const leftOut = current.filter((id) => !requested.includes(id));
  assert.deepEqual([...r.movedToEnd, ...r.keptFiles, ...r.kept, ...r.pruned].sort((a, b) => a - b), [...leftOut].sort((a, b) => a - b));
  assert.deepEqual(r.order.slice(requested.length), leftOut.filter((id) => !r.pruned.includes(id)), "what stays keeps its order");
  for (const id of r.pruned) assert.ok(!keep.includes(id), "keepOnPrune entries are never pruned");
  if (!prune) assert.deepEqual(r.kept, []);
  assert.equal(new Set(r.order).size, r.order.length);
  if (!prune) assert.deepEqual(r.order.slice(requested.length), leftOut);
  if (!pruneFiles) for (const f of files) assert.ok(r.order.includes(f), "File entries are never dropped silently");
  for (const id of r.prunedFiles) assert.ok(files.includes(id) && r.pruned.includes(id));
  const free = nextFreeBootNumber(current);
  assert.ok(!current.includes(free));
  for (let i = 0; i < free; i++) assert.ok(current.includes(i));
});

test("property-based cases total at least 100,000", () => {
  assert.ok(totalRuns >= 100_000, `${totalRuns}`);
});
