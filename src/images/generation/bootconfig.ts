// Reading a BIOS boot loader's configuration: which kernel, initrd and command line its
// default entry boots. Pure functions of the file's text, so they are tested without disks.

/** Where the boot loader looks for the kernel's file system. */
export type RootHint =
  /** The file system the configuration was read from (SYSLINUX/EXTLINUX always; GRUB without search). */
  | { kind: "same" }
  | { kind: "fs-uuid"; value: string }
  | { kind: "fs-label"; value: string }
  | { kind: "file"; value: string }
  /** GRUB `set root=hd0,msdos3`: partition 3 of the boot disk. */
  | { kind: "partition"; disk: number; partition: number };

/** The default entry of a boot loader configuration. Paths are absolute within their file system. */
export interface BootEntry {
  /** The entry's label or title, when it has one. */
  label?: string;
  kernel: string;
  initrd: string[];
  /** The kernel command line exactly as the configuration gives it (initrd= options removed for SYSLINUX). */
  cmdline: string;
  root: RootHint;
  /** Things the parser could not carry over, each a sentence. */
  notes: string[];
}

export class BootConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BootConfigError";
  }
}

function joinPath(dir: string, p: string): string {
  if (p.startsWith("/")) return normalize(p);
  return normalize(`${dir.replace(/\/+$/, "")}/${p}`);
}

function normalize(p: string): string {
  const out: string[] = [];
  for (const part of p.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") out.pop();
    else out.push(part);
  }
  return "/" + out.join("/");
}

interface SyslinuxLabel {
  name: string;
  kernel?: string;
  kernelKeyword?: string;
  append?: string;
  initrd?: string;
  menuDefault: boolean;
}

/**
 * The default entry of a SYSLINUX/EXTLINUX configuration (syslinux.cfg, extlinux.conf;
 * keywords as in the Syslinux wiki's "Config" page). `configDir` is the directory the file
 * was found in: Syslinux 4+ resolves relative paths against it. DEFAULT names a LABEL, or is
 * itself a kernel with options; with a menu module as DEFAULT, the LABEL with MENU DEFAULT,
 * else ONTIMEOUT, else the first LABEL is booted. Throws BootConfigError when the default
 * boots something other than a Linux kernel (a COM32 module, a chain loader).
 */
export function parseSyslinuxConfig(text: string, configDir: string): BootEntry {
  const labels: SyslinuxLabel[] = [];
  let current: SyslinuxLabel | undefined;
  let def: string | undefined;
  let onTimeout: string | undefined;
  let globalAppend: string | undefined;
  const notes: string[] = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const m = /^(\S+)\s*(.*)$/.exec(line);
    if (!m) continue;
    const key = m[1]!.toUpperCase();
    const rest = m[2]!.trim();
    if (key === "LABEL") {
      current = { name: rest, menuDefault: false };
      labels.push(current);
      continue;
    }
    if (key === "MENU") {
      if (/^DEFAULT$/i.test(rest) && current) current.menuDefault = true;
      continue;
    }
    if (key === "INCLUDE") {
      notes.push(`INCLUDE ${rest} was not followed`);
      continue;
    }
    if (key === "DEFAULT") def = rest;
    else if (key === "ONTIMEOUT") onTimeout = rest;
    else if (["KERNEL", "LINUX", "COM32", "BOOT", "BSS", "PXE", "FDIMAGE", "COMBOOT", "CONFIG", "LOCALBOOT"].includes(key)) {
      if (current) {
        current.kernel = rest;
        current.kernelKeyword = key;
      }
    } else if (key === "APPEND") {
      if (current) current.append = rest;
      else globalAppend = rest;
    } else if (key === "INITRD") {
      if (current) current.initrd = rest;
    }
  }
  const byName = (n: string) => labels.find((l) => l.name === n) ?? labels.find((l) => l.name.toLowerCase() === n.toLowerCase());
  let chosen: SyslinuxLabel | undefined;
  if (def !== undefined) {
    const [first, ...opts] = def.split(/\s+/);
    chosen = byName(def) ?? (first ? byName(first) : undefined);
    if (!chosen && first && /\.c32$/i.test(first)) {
      // A menu: MENU DEFAULT, else ONTIMEOUT, else the first label.
      chosen = labels.find((l) => l.menuDefault) ?? (onTimeout ? byName(onTimeout.split(/\s+/)[0]!) : undefined) ?? labels[0];
    } else if (!chosen && first) {
      // DEFAULT with no such label: a kernel name with its options (the old form).
      chosen = { name: first, kernel: first, kernelKeyword: "KERNEL", append: opts.join(" ") || globalAppend, menuDefault: false };
    }
  } else {
    chosen = labels.find((l) => l.menuDefault) ?? labels[0];
  }
  if (!chosen) throw new BootConfigError("the configuration has no DEFAULT and no LABEL");
  if (!chosen.kernel) throw new BootConfigError(`LABEL ${chosen.name} has no KERNEL or LINUX line`);
  const kw = chosen.kernelKeyword ?? "KERNEL";
  const kernelFile = chosen.kernel.split(/\s+/)[0]!;
  if (kw !== "KERNEL" && kw !== "LINUX") throw new BootConfigError(`LABEL ${chosen.name} boots with ${kw} ${kernelFile}, not a Linux kernel`);
  if (/\.(c32|com|cbt|0|bin|bss)$/i.test(kernelFile)) throw new BootConfigError(`LABEL ${chosen.name} runs ${kernelFile}, not a Linux kernel`);
  let append = chosen.append ?? globalAppend ?? "";
  if (append === "-") append = "";
  const initrd: string[] = [];
  if (chosen.initrd) initrd.push(...chosen.initrd.split(",").map((s) => s.trim()).filter(Boolean));
  const kept: string[] = [];
  for (const tok of append.split(/\s+/).filter(Boolean)) {
    const im = /^initrd=(.*)$/.exec(tok);
    if (im) initrd.push(...im[1]!.split(",").filter(Boolean));
    else kept.push(tok);
  }
  return {
    label: chosen.name,
    kernel: joinPath(configDir, kernelFile),
    initrd: initrd.map((p) => joinPath(configDir, p)),
    cmdline: kept.join(" "),
    root: { kind: "same" },
    notes,
  };
}

/** Splits a GRUB script line into words (quotes removed, `\` escapes kept literal). */
function grubWords(line: string): string[] {
  const words: string[] = [];
  let cur = "";
  let inWord = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === "'") {
      const j = line.indexOf("'", i + 1);
      cur += line.slice(i + 1, j < 0 ? line.length : j);
      i = j < 0 ? line.length : j;
      inWord = true;
    } else if (c === '"') {
      let j = i + 1;
      while (j < line.length && line[j] !== '"') {
        if (line[j] === "\\" && j + 1 < line.length) j++;
        cur += line[j];
        j++;
      }
      i = j;
      inWord = true;
    } else if (c === "\\" && i + 1 < line.length) {
      cur += line[++i];
      inWord = true;
    } else if (c === " " || c === "\t") {
      if (inWord) words.push(cur);
      cur = "";
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (inWord) words.push(cur);
  return words;
}

interface GrubBlock {
  kind: "menuentry" | "submenu";
  title: string;
  id?: string;
  body: string[];
  children: GrubBlock[];
}

/**
 * Cuts a grub.cfg into its top-level lines and its menuentry/submenu blocks. Braces are
 * matched per line as grub-mkconfig writes them ("menuentry ... {" / "}").
 */
function grubStructure(text: string): { top: string[]; blocks: GrubBlock[] } {
  const lines = text.split(/\r?\n/).map((l) => l.trim());
  const top: string[] = [];
  const blocks: GrubBlock[] = [];
  // Entries and other brace blocks (function f { ... }) nest; if/fi has no braces.
  const stack: (GrubBlock | "other")[] = [];
  const entry = (): GrubBlock | undefined => {
    for (let i = stack.length - 1; i >= 0; i--) if (stack[i] !== "other") return stack[i] as GrubBlock;
    return undefined;
  };
  for (const line of lines) {
    if (!line || line.startsWith("#")) continue;
    const w = grubWords(line);
    const head = w[0];
    if ((head === "menuentry" || head === "submenu") && line.endsWith("{")) {
      const idIdx = w.findIndex((x) => x === "--id" || x === "$menuentry_id_option");
      const b: GrubBlock = { kind: head, title: w[1] ?? "", body: [], children: [] };
      if (idIdx > 0 && w[idIdx + 1]) b.id = w[idIdx + 1];
      (entry()?.children ?? blocks).push(b);
      stack.push(b);
      continue;
    }
    if (line === "}") {
      stack.pop();
      continue;
    }
    if (line.endsWith("{")) {
      stack.push("other");
      continue;
    }
    const e = entry();
    if (e) e.body.push(line);
    else if (stack.length === 0) top.push(line);
  }
  return { top, blocks };
}

const GRUB_VAR = /\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g;

/**
 * The default entry of a GRUB 2 grub.cfg (as grub-mkconfig writes it, GRUB manual §6.1 and
 * §16.3): `set default=` by index, title or id, "N>M" into submenus; "saved" or
 * ${saved_entry} takes `savedEntry` (from grubenv) when given. Within the entry, the last
 * `search ... --set=root` or `set root=` says where the kernel is, and `linux`/`initrd`
 * (also linux16/linuxefi, initrd16/initrdefi) what it boots. Variables set by plain
 * top-level `set X=Y` are substituted; others are dropped with a note.
 */
export function parseGrubConfig(text: string, opts: { savedEntry?: string } = {}): BootEntry {
  const { top, blocks } = grubStructure(text);
  const vars = new Map<string, string>();
  let def = "0";
  const notes: string[] = [];
  for (const line of top) {
    const m = /^set\s+([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) continue;
    const value = grubWords(m[2]!).join(" ");
    if (m[1] === "default") def = value;
    else vars.set(m[1]!, value);
  }
  if (def === "saved" || def === "${saved_entry}" || def === "$saved_entry") {
    if (opts.savedEntry) def = opts.savedEntry;
    else {
      notes.push(`default is "${def}" and no saved entry was found; the first entry is used`);
      def = "0";
    }
  }
  const find = (list: GrubBlock[], key: string): GrubBlock | undefined =>
    /^\d+$/.test(key) ? list[Number(key)] : list.find((b) => b.title === key || b.id === key);
  let chosen: GrubBlock | undefined;
  let list = blocks;
  for (const part of def.split(">")) {
    chosen = find(list, part);
    if (!chosen) break;
    list = chosen.children;
  }
  if (chosen?.kind === "submenu") chosen = chosen.children[0];
  if (!chosen) {
    notes.push(`default entry "${def}" not found; the first entry is used`);
    chosen = blocks[0]?.kind === "submenu" ? blocks[0].children[0] : blocks[0];
  }
  if (!chosen) throw new BootConfigError("grub.cfg has no menuentry");

  let root: RootHint = { kind: "same" };
  let kernel: string | undefined;
  let args: string[] = [];
  let initrd: string[] = [];
  const dropped = new Set<string>();
  const subst = (w: string): string =>
    w.replace(GRUB_VAR, (_all, name: string) => {
      const v = vars.get(name);
      if (v === undefined) dropped.add(name);
      return v ?? "";
    });
  for (const line of chosen.body) {
    const w = grubWords(line);
    const head = w[0] ?? "";
    if (head === "search" || head.startsWith("search.")) {
      let kind: "fs-uuid" | "fs-label" | "file" = "file";
      if (head === "search.fs_uuid") kind = "fs-uuid";
      if (head === "search.fs_label") kind = "fs-label";
      let value: string | undefined;
      let target = head.startsWith("search.") ? w[2] : undefined;
      const pos: string[] = [];
      for (let i = 1; i < w.length; i++) {
        const a = w[i]!;
        if (a === "--fs-uuid" || a === "-u") kind = "fs-uuid";
        else if (a === "--label" || a === "-l") kind = "fs-label";
        else if (a === "--file" || a === "-f") kind = "file";
        else if (a === "--set" || a === "-s") target = w[i + 1]?.startsWith("-") ? "root" : (w[++i] ?? "root");
        else if (a.startsWith("--set=")) target = a.slice(6);
        else if (a.startsWith("--hint") || a === "--no-floppy" || a === "-n") {
          if ((a === "--hint" || /^--hint-[a-z]+$/.test(a)) && !a.includes("=")) i++;
        } else pos.push(a);
      }
      value = pos[0];
      if (value && (target ?? "root") === "root") root = { kind, value: subst(value) };
    } else if (head === "set") {
      const m = /^root=(.*)$/.exec(w[1] ?? "");
      if (m) {
        const v = m[1]!.replace(/^\(|\)$/g, "");
        const pm = /^hd(\d+),(?:msdos|gpt)?(\d+)$/.exec(v);
        if (pm) root = { kind: "partition", disk: Number(pm[1]), partition: Number(pm[2]) };
      }
    } else if (head === "linux" || head === "linux16" || head === "linuxefi") {
      kernel = w[1];
      args = w.slice(2);
    } else if (head === "initrd" || head === "initrd16" || head === "initrdefi") {
      initrd = w.slice(1);
    } else if (head === "chainloader" || head === "multiboot" || head === "multiboot2") {
      throw new BootConfigError(`the default entry "${chosen.title}" uses ${head}, not a Linux kernel`);
    }
  }
  if (!kernel) throw new BootConfigError(`the default entry "${chosen.title}" has no linux line`);
  const cmdline = args.map(subst).filter((a) => a !== "").join(" ");
  if (dropped.size) notes.push(`GRUB variables without a value here were dropped from the command line: ${[...dropped].map((v) => "$" + v).join(" ")}`);
  const stripDevice = (p: string) => p.replace(/^\([^)]*\)/, "");
  return {
    label: chosen.title,
    kernel: normalize(stripDevice(subst(kernel))),
    initrd: initrd.map((p) => normalize(stripDevice(subst(p)))),
    cmdline,
    root,
    notes,
  };
}

/** Reads `saved_entry` from a GRUB environment block (grubenv: "# GRUB Environment Block" then key=value lines). */
export function grubenvSavedEntry(text: string): string | undefined {
  return /^saved_entry=(.*)$/m.exec(text)?.[1]?.trim() || undefined;
}
