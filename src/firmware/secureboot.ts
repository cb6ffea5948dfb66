/**
 * Secure Boot key variables (PK, KEK, db, dbx) and Hyper-V's secure boot templates, built
 * from a key store that has Microsoft's certificates enrolled (Debian's OVMF_VARS_4M.ms.fd:
 * PK and KEK from Debian plus Microsoft KEK CA 2011; db = Microsoft Windows Production PCA
 * 2011 + Microsoft Corporation UEFI CA 2011).
 *
 * What Hyper-V's templates trust (microsoft/openvmm's vendored Hyper-V template JSON, as its
 * PR #4408 tabulates them): MicrosoftWindows db = Windows Production PCA 2011 (+ Windows
 * UEFI CA 2023); MicrosoftUEFICertificateAuthority db = Microsoft UEFI CA 2011 (+ UEFI CA
 * 2023 and the Azure Services Linux Kmod PCA) and NOT the Windows CA: one template at a time
 * trusts either Windows or third-party (shim-signed) loaders. The same split is made here
 * from whatever the source db holds (certificates recognised by subject, so a newer Debian
 * template with the 2023 CAs splits the same way). OpenSourceShieldedVM is the template of
 * Linux shielded VMs (shim-based, so signed by the third-party UEFI CA); its exact list is
 * not published and vmhost has no shielding, so it gets the UEFI CA db and says so.
 *
 * The keys are written into the VM's own store (never by recopying a template), so the VM's
 * boot entries survive a template change. Writing a time-authenticated variable directly
 * into the flash image is what enrolling at build time does too: authentication applies to
 * SetVariable() calls at run time, not to what the firmware finds in its flash.
 */
import { X509Certificate, createHash } from "node:crypto";
import { GUIDS, guidToString } from "./guid.js";
import type { VarStore } from "./varstore.js";

export type SecureBootTemplateName = "MicrosoftWindows" | "MicrosoftUEFICertificateAuthority" | "OpenSourceShieldedVM";

export const SECURE_BOOT_VARIABLE_GUID = {
  /** EFI_SECURE_BOOT_ENABLE_DISABLE: SecureBootEnable (edk2's switch, read at boot). */
  secureBootEnable: "f0a30bc7-af08-4556-99c4-001009c93a44",
  customMode: "c076ec0c-7028-4399-a072-71ee5c448b9f",
  vendorKeysNv: "9073e4e0-60ec-4b6e-9903-4c223c260f3c",
  certDb: "d9bee56e-75dc-49d9-b4d7-b534210f637a",
} as const;

const CERT_X509 = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";

export interface SignatureListEntry {
  /** EFI_SIGNATURE_LIST SignatureType. */
  readonly type: string;
  readonly owner: string;
  readonly data: Uint8Array;
  /** For X.509 entries: the certificate's CN (or whole subject). */
  readonly subject: string | null;
}

export interface SignatureList {
  readonly type: string;
  /** The list's bytes as stored. */
  readonly bytes: Uint8Array;
  readonly entries: SignatureListEntry[];
}

function rd32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

// Parsing an X.509 certificate costs ~0.2 ms; the same few certificates are in every store.
const subjectCache = new Map<string, string | null>();

function commonName(der: Uint8Array): string | null {
  const key = createHash("sha1").update(der).digest("hex");
  if (subjectCache.has(key)) return subjectCache.get(key)!;
  let name: string | null;
  try {
    const subject = new X509Certificate(der).subject;
    name = /(?:^|\n)CN=([^\n]*)/.exec(subject)?.[1] ?? subject.replace(/\n/g, ", ");
  } catch {
    name = null;
  }
  if (subjectCache.size > 256) subjectCache.clear();
  subjectCache.set(key, name);
  return name;
}

/** Parses an EFI_SIGNATURE_LIST sequence (the data of PK, KEK, db, dbx). Stops at a damaged list. */
export function parseSignatureLists(data: Uint8Array): SignatureList[] {
  const out: SignatureList[] = [];
  let o = 0;
  while (o + 28 <= data.length) {
    const type = guidToString(data, o);
    const listSize = rd32(data, o + 16);
    const headerSize = rd32(data, o + 20);
    const sigSize = rd32(data, o + 24);
    if (listSize < 28 || o + listSize > data.length || sigSize < 16) break;
    const entries: SignatureListEntry[] = [];
    for (let p = o + 28 + headerSize; p + sigSize <= o + listSize; p += sigSize) {
      const body = data.slice(p + 16, p + sigSize);
      entries.push({ type, owner: guidToString(data, p), data: body, subject: type === CERT_X509 ? commonName(body) : null });
    }
    out.push({ type, bytes: data.slice(o, o + listSize), entries });
    o += listSize;
  }
  return out;
}

type Trust = "windows" | "third-party" | "other";

/** Microsoft's Windows CAs versus its third-party UEFI CAs, by certificate subject. */
export function classifyCertificate(subject: string | null): Trust {
  if (subject === null) return "other";
  if (/Windows Production PCA|Windows UEFI CA/i.test(subject)) return "windows";
  if (/UEFI CA|Linux Kmod PCA/i.test(subject)) return "third-party";
  return "other";
}

export const TEMPLATE_TRUST: Readonly<Record<SecureBootTemplateName, readonly Trust[]>> = {
  MicrosoftWindows: ["windows"],
  MicrosoftUEFICertificateAuthority: ["third-party"],
  OpenSourceShieldedVM: ["third-party"],
};

/** db for a template: the source's signature lists whose certificates the template trusts. */
export function templateDb(sourceDb: Uint8Array, template: SecureBootTemplateName): { db: Uint8Array; trusted: string[] } {
  const keep = TEMPLATE_TRUST[template];
  const parts: Uint8Array[] = [];
  const trusted: string[] = [];
  for (const list of parseSignatureLists(sourceDb)) {
    if (list.type !== CERT_X509) continue;
    const subjects = list.entries.map((e) => e.subject);
    if (subjects.length > 0 && subjects.every((s) => keep.includes(classifyCertificate(s)))) {
      parts.push(list.bytes);
      for (const s of subjects) trusted.push(s ?? "?");
    }
  }
  const db = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    db.set(p, o);
    o += p.length;
  }
  return { db, trusted };
}

function copyVariable(target: VarStore, source: VarStore, name: string, guid: string, data?: Uint8Array): boolean {
  const v = source.get(name, guid);
  if (v === undefined) return false;
  target.set(name, guid, v.attributes, data ?? v.data, {
    ...(v.timestamp ? { timestamp: v.timestamp } : {}),
    monotonicCount: v.monotonicCount,
    pubKeyIndex: v.pubKeyIndex,
  });
  return true;
}

export class SecureBootTemplateError extends Error {}

/**
 * Puts a template's keys into `target` from `source` (a store with Microsoft's keys enrolled)
 * and switches Secure Boot on or off (SecureBootEnable, edk2's own switch: with it off the
 * keys stay, and the firmware verifies nothing). Boot#### and everything else are untouched.
 */
export function applySecureBootTemplate(
  target: VarStore, source: VarStore, template: SecureBootTemplateName, enable: boolean,
): { trusted: string[] } {
  const sourceDb = source.get("db", GUIDS.imageSecurityDatabase);
  if (sourceDb === undefined || source.get("PK", GUIDS.globalVariable) === undefined) {
    throw new SecureBootTemplateError("the key store has no PK or db: it is not a Secure Boot template");
  }
  const { db, trusted } = templateDb(sourceDb.data, template);
  if (trusted.length === 0) throw new SecureBootTemplateError(`the key store's db has no certificate the ${template} template trusts`);
  copyVariable(target, source, "PK", GUIDS.globalVariable);
  copyVariable(target, source, "KEK", GUIDS.globalVariable);
  copyVariable(target, source, "db", GUIDS.imageSecurityDatabase, db);
  if (!copyVariable(target, source, "dbx", GUIDS.imageSecurityDatabase)) target.delete("dbx", GUIDS.imageSecurityDatabase);
  copyVariable(target, source, "VendorKeysNv", SECURE_BOOT_VARIABLE_GUID.vendorKeysNv);
  if (target.get("certdb", SECURE_BOOT_VARIABLE_GUID.certDb) === undefined) copyVariable(target, source, "certdb", SECURE_BOOT_VARIABLE_GUID.certDb);
  setSecureBootEnable(target, enable);
  target.set("CustomMode", SECURE_BOOT_VARIABLE_GUID.customMode, 0x3, Uint8Array.of(0));
  return { trusted };
}

/** edk2's SecureBootEnable (NV|BS): honoured at boot when a PK is enrolled. */
export function setSecureBootEnable(store: VarStore, enable: boolean): void {
  store.set("SecureBootEnable", SECURE_BOOT_VARIABLE_GUID.secureBootEnable, 0x3, Uint8Array.of(enable ? 1 : 0));
}

export interface SecureBootNvramState {
  /** A PK is enrolled (user mode); without one the firmware is in setup mode and verifies nothing. */
  readonly pkEnrolled: boolean;
  readonly setupMode: boolean;
  /** edk2's SecureBootEnable, or null when absent. */
  readonly secureBootEnable: boolean | null;
  /** What a Secure Boot firmware does with this store: PK enrolled and SecureBootEnable not off. */
  readonly secureBoot: boolean;
  readonly pk: string[];
  readonly kek: string[];
  readonly db: string[];
  readonly dbxEntries: number;
}

function subjects(store: VarStore, name: string, guid: string): string[] {
  const v = store.get(name, guid);
  if (v === undefined) return [];
  return parseSignatureLists(v.data).flatMap((l) => l.entries.map((e) => e.subject ?? `${l.type} entry`));
}

/** SecureBoot and SetupMode as the firmware will derive them from this store at boot. */
export function readSecureBootState(store: VarStore): SecureBootNvramState {
  const pk = subjects(store, "PK", GUIDS.globalVariable);
  const pkEnrolled = store.get("PK", GUIDS.globalVariable) !== undefined;
  const sbe = store.get("SecureBootEnable", SECURE_BOOT_VARIABLE_GUID.secureBootEnable);
  const secureBootEnable = sbe === undefined || sbe.data.length === 0 ? null : sbe.data[0] === 1;
  const dbx = store.get("dbx", GUIDS.imageSecurityDatabase);
  return {
    pkEnrolled,
    setupMode: !pkEnrolled,
    secureBootEnable,
    // AuthVariableLib: SecureBoot = user mode && SecureBootEnable (absent means enabled when a PK is enrolled).
    secureBoot: pkEnrolled && secureBootEnable !== false,
    pk,
    kek: subjects(store, "KEK", GUIDS.globalVariable),
    db: subjects(store, "db", GUIDS.imageSecurityDatabase),
    dbxEntries: dbx === undefined ? 0 : parseSignatureLists(dbx.data).reduce((n, l) => n + l.entries.length, 0),
  };
}
