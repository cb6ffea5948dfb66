/**
 * EFI_LOAD_OPTION and BootOrder codecs: every Boot#### in the fixtures byte for byte,
 * attributes, several file paths, optional data, malformed input.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  autoCreatedMarker, bootOptionName, BootError, decodeBootOrder, decodeLoadOption, devicePathToText, encodeBootOrder,
  encodeLoadOption, GUIDS, isAutoCreated, listBootOptionIds, LOAD_OPTION, LoadOptionError, loadOptionPaths, makeLoadOption,
  parseBootOptionName, parseVarStore, readBootNext, readBootOption, readBootOptionBytes, readBootOrder, writeBootNext,
  writeBootOption, writeBootOrder, deleteBootOption, devicePathFromText, encodeDevicePath,
} from "../../src/firmware/index.js";
import { BOOTED_STORES, fixture, PRISTINE_FIXTURES } from "../fixtures/firmware/helpers.js";

test("every Boot#### in the fixtures decodes and encodes to the same bytes", () => {
  let n = 0;
  for (const name of [...BOOTED_STORES, ...PRISTINE_FIXTURES]) {
    const s = parseVarStore(fixture(name));
    for (const id of listBootOptionIds(s)) {
      const raw = readBootOptionBytes(s, id)!;
      const o = decodeLoadOption(raw);
      assert.deepEqual(encodeLoadOption(o), raw, `${name} ${bootOptionName(id)}`);
      const paths = loadOptionPaths(o);
      assert.ok(paths.length >= 1);
      // Rebuilding the option from its text form gives the same bytes too.
      const rebuilt = makeLoadOption({
        description: o.description,
        path: paths.map((p) => devicePathFromText(devicePathToText(p))),
        attributes: o.attributes,
        optionalData: o.optionalData,
      });
      assert.deepEqual(encodeLoadOption(rebuilt), raw, `${name} ${bootOptionName(id)} via text`);
      n++;
    }
  }
  assert.ok(n >= 40, `only ${n} options`);
});

test("OVMF's options: UiApp is a hidden application, device options carry the auto-created marker", () => {
  const s = parseVarStore(fixture("ovmf4m.fd"));
  const ui = readBootOption(s, 0)!;
  assert.equal(ui.description, "UiApp");
  assert.equal(ui.attributes, LOAD_OPTION.ACTIVE | LOAD_OPTION.HIDDEN | LOAD_OPTION.CATEGORY_APP);
  assert.equal(isAutoCreated(ui), false);
  const disk = readBootOption(s, 1)!;
  assert.equal(disk.description, "UEFI QEMU QEMU HARDDISK ");
  assert.equal(disk.attributes, LOAD_OPTION.ACTIVE);
  assert.equal(isAutoCreated(disk), true);
  assert.deepEqual(disk.optionalData, autoCreatedMarker());
  assert.equal(Buffer.from(autoCreatedMarker()).toString("hex"), "4eac0881119f594d850ee21a522c59b2");
  const shell = readBootOption(s, 6)!;
  assert.equal(shell.description, "EFI Internal Shell");
  assert.equal(isAutoCreated(shell), false);
});

test("several file paths, optional data and odd descriptions survive", () => {
  const o = makeLoadOption({
    description: "Bo\u00f6t \ud83d\ude00 \ud800",
    path: [devicePathFromText("PciRoot(0x0)/Pci(0x1,0x0)"), devicePathFromText("\\EFI\\x.efi")],
    attributes: LOAD_OPTION.ACTIVE | LOAD_OPTION.FORCE_RECONNECT,
    optionalData: Uint8Array.of(0, 1, 2, 255),
  });
  const back = decodeLoadOption(encodeLoadOption(o));
  assert.deepEqual(back, o);
  assert.deepEqual(loadOptionPaths(back).map((p) => devicePathToText(p)), ["PciRoot(0x0)/Pci(0x1,0x0)", "\\EFI\\x.efi"]);
  const fromText = makeLoadOption({ description: "t", path: "HD(1,MBR,0x1,0x800,0x1000)/\\EFI\\BOOT\\BOOTX64.EFI" });
  assert.equal(fromText.attributes, LOAD_OPTION.ACTIVE);
  assert.deepEqual(fromText.filePathList, encodeDevicePath(devicePathFromText("HD(1,MBR,0x1,0x800,0x1000)/\\EFI\\BOOT\\BOOTX64.EFI")));
});

test("malformed load options give typed errors", () => {
  const isCode = (code: string) => (e: unknown): boolean => e instanceof LoadOptionError && e.code === code;
  assert.throws(() => decodeLoadOption(Uint8Array.of(1, 0, 0, 0, 4)), isCode("TRUNCATED"));
  assert.throws(() => decodeLoadOption(Uint8Array.of(1, 0, 0, 0, 4, 0, 65, 0, 66, 0)), isCode("UNTERMINATED_DESCRIPTION"));
  assert.throws(() => decodeLoadOption(Uint8Array.of(1, 0, 0, 0, 8, 0, 65, 0, 0, 0, 0x7f, 0xff, 4, 0)), isCode("BAD_FILE_PATH_LENGTH"));
  const badPath = decodeLoadOption(Uint8Array.of(1, 0, 0, 0, 4, 0, 0, 0, 1, 1, 2, 0));
  assert.throws(() => loadOptionPaths(badPath), isCode("BAD_FILE_PATH"));
  assert.throws(() => makeLoadOption({ description: "a\0b", path: "\\x" }), LoadOptionError);
});

test("Boot#### names and BootOrder encoding", () => {
  assert.equal(bootOptionName(0xa), "Boot000A");
  assert.equal(bootOptionName(0xffff), "BootFFFF");
  assert.equal(parseBootOptionName("Boot001F"), 0x1f);
  assert.equal(parseBootOptionName("Boot001f"), null, "edk2 accepts uppercase hex only");
  assert.equal(parseBootOptionName("BootOrder"), null);
  assert.throws(() => bootOptionName(0x10000), BootError);
  assert.deepEqual(decodeBootOrder(encodeBootOrder([7, 0, 0x1234])), [7, 0, 0x1234]);
  assert.deepEqual(Array.from(encodeBootOrder([0x0102])), [2, 1]);
  assert.throws(() => decodeBootOrder(Uint8Array.of(1)), (e: unknown) => e instanceof BootError && e.code === "BAD_BOOT_ORDER");
});

test("store helpers: write an option, order it first, BootNext, delete", () => {
  const s = parseVarStore(fixture("ovmf4m.fd"));
  const id = 7;
  writeBootOption(s, id, makeLoadOption({ description: "debian", path: "HD(1,GPT,1C2A3B4D-5E6F-4071-8293-A4B5C6D7E8F9,0x800,0x100000)/\\EFI\\debian\\shimx64.efi" }));
  writeBootOrder(s, [id, ...readBootOrder(s)!]);
  writeBootNext(s, 2);
  const re = parseVarStore(s.toBuffer());
  assert.deepEqual(readBootOrder(re), [7, 0, 1, 2, 3, 4, 5, 6]);
  assert.equal(readBootNext(re), 2);
  assert.equal(readBootOption(re, 7)?.description, "debian");
  assert.equal(re.get("Boot0007", GUIDS.globalVariable)?.attributes, 7);
  writeBootNext(re, null);
  assert.equal(readBootNext(re), null);
  assert.equal(deleteBootOption(re, 7), true);
  assert.equal(readBootOption(re, 7), undefined);
});
