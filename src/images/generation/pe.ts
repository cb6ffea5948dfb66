// What a UEFI loader or a Linux kernel file says about itself, read from its bytes: the
// Authenticode certificates of a PE/COFF image, shim's built-in vendor certificate and the
// x86 boot protocol header of a bzImage. Used to decide which Secure Boot template a loader
// needs and whether Debian's shim will start a guest's kernel.
import { X509Certificate } from "node:crypto";

/** One Authenticode signature: the certificate that signed and the others the signature carries. */
export interface AuthenticodeSignature {
  signer: X509Certificate | undefined;
  certificates: X509Certificate[];
}

interface Tlv {
  tag: number;
  /** Offset of the value. */
  start: number;
  /** Offset just past the value. */
  end: number;
  /** Offset of the tag (start of the whole TLV). */
  head: number;
}

/** One DER TLV at `o` (definite lengths only, which is all DER has). */
function tlv(b: Uint8Array, o: number): Tlv {
  if (o + 2 > b.length) throw new Error("DER: truncated");
  const tag = b[o]!;
  let len = b[o + 1]!;
  let p = o + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || p + n > b.length) throw new Error("DER: bad length");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + b[p + i]!;
    p += n;
  }
  if (p + len > b.length) throw new Error("DER: value past the end");
  return { tag, start: p, end: p + len, head: o };
}

function children(b: Uint8Array, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let o = parent.start; o < parent.end; ) {
    const t = tlv(b, o);
    out.push(t);
    o = t.end;
  }
  return out;
}

/**
 * The certificates and the signer of a PKCS#7 SignedData blob (RFC 2315 §9.1: ContentInfo
 * { contentType, [0] SignedData { version, digestAlgorithms, contentInfo, [0] certificates,
 * [1] crls, signerInfos } }). The signer is the certificate whose serial number the first
 * SignerInfo's issuerAndSerialNumber names.
 */
export function pkcs7Certificates(der: Uint8Array): AuthenticodeSignature {
  const ci = tlv(der, 0);
  const [, explicit] = children(der, ci);
  if (!explicit || explicit.tag !== 0xa0) throw new Error("PKCS#7: no content");
  const sd = children(der, explicit)[0];
  if (!sd || sd.tag !== 0x30) throw new Error("PKCS#7: no SignedData");
  const parts = children(der, sd);
  const certificates: X509Certificate[] = [];
  let signerSerial: string | undefined;
  for (const p of parts) {
    if (p.tag === 0xa0) {
      for (const c of children(der, p)) if (c.tag === 0x30) certificates.push(new X509Certificate(Buffer.from(der.subarray(c.head, c.end))));
    }
    if (p.tag === 0x31 && p !== parts[1]) {
      // signerInfos: SET OF SignerInfo { version, issuerAndSerialNumber { issuer, serial }, ... }
      const si = children(der, p)[0];
      const ias = si ? children(der, si)[1] : undefined;
      const serial = ias ? children(der, ias)[1] : undefined;
      if (serial && serial.tag === 0x02) {
        let s = Buffer.from(der.subarray(serial.start, serial.end));
        while (s.length > 1 && s[0] === 0) s = s.subarray(1);
        signerSerial = s.toString("hex").toUpperCase();
      }
    }
  }
  const norm = (x: string) => x.replace(/^0+/, "").toUpperCase();
  const signer = signerSerial === undefined ? undefined : certificates.find((c) => norm(c.serialNumber) === norm(signerSerial!));
  return { signer, certificates };
}

interface PeHeaders {
  /** File offset of the optional header. */
  optional: number;
  pe32plus: boolean;
  sections: { name: string; rawOffset: number; rawSize: number }[];
}

function peHeaders(b: Buffer): PeHeaders | undefined {
  if (b.length < 0x40 || b.toString("latin1", 0, 2) !== "MZ") return undefined;
  const pe = b.readUInt32LE(0x3c);
  if (pe + 24 > b.length || b.toString("latin1", pe, pe + 4) !== "PE\0\0") return undefined;
  const nSections = b.readUInt16LE(pe + 6);
  const optSize = b.readUInt16LE(pe + 20);
  const optional = pe + 24;
  if (optional + 2 > b.length) return undefined;
  const magic = b.readUInt16LE(optional);
  const sections: PeHeaders["sections"] = [];
  const table = optional + optSize;
  // Names longer than 8 bytes are "/N": offset N into the COFF string table behind the symbols.
  const strings = b.readUInt32LE(pe + 12) + b.readUInt32LE(pe + 16) * 18;
  for (let i = 0; i < nSections && table + (i + 1) * 40 <= b.length; i++) {
    const s = table + i * 40;
    let name = b.toString("latin1", s, s + 8).replace(/\0+$/, "");
    const long = /^\/(\d+)$/.exec(name);
    if (long && strings > 0 && strings + Number(long[1]) < b.length) {
      const at = strings + Number(long[1]);
      const end = b.indexOf(0, at);
      name = b.toString("latin1", at, end < 0 ? Math.min(b.length, at + 64) : end);
    }
    sections.push({ name, rawSize: b.readUInt32LE(s + 16), rawOffset: b.readUInt32LE(s + 20) });
  }
  return { optional, pe32plus: magic === 0x20b, sections };
}

/** True when the file is a PE/COFF image (a UEFI application, or a kernel with its EFI stub). */
export function isPeImage(b: Buffer): boolean {
  return peHeaders(b) !== undefined;
}

/**
 * The Authenticode signatures of a PE/COFF image: the certificate table (data directory 4,
 * whose "address" is a file offset) holds WIN_CERTIFICATE entries, 8-byte aligned; type
 * 0x0002 is PKCS#7 SignedData (Microsoft PE/COFF specification, "The Attribute Certificate
 * Table"). Signed shims carry more than one. Empty for an unsigned image.
 */
export function authenticodeSignatures(b: Buffer): AuthenticodeSignature[] {
  const h = peHeaders(b);
  if (!h) return [];
  const dd = h.optional + (h.pe32plus ? 112 : 96) + 4 * 8;
  if (dd + 8 > b.length) return [];
  const off = b.readUInt32LE(dd);
  const size = b.readUInt32LE(dd + 4);
  if (off === 0 || size === 0 || off + size > b.length) return [];
  const out: AuthenticodeSignature[] = [];
  for (let o = off; o + 8 <= off + size; ) {
    const len = b.readUInt32LE(o);
    const type = b.readUInt16LE(o + 6);
    if (len < 8 || o + len > off + size) break;
    if (type === 0x0002) {
      try {
        out.push(pkcs7Certificates(b.subarray(o + 8, o + len)));
      } catch {
        // a damaged signature is as good as none
      }
    }
    o += (len + 7) & ~7;
  }
  return out;
}

/**
 * shim's built-in vendor certificate: the `.vendor_cert` section starts with { authorized
 * size, deauthorized size, authorized offset, deauthorized offset } (u32 each, offsets from
 * the section start) and the authorized blob is one DER certificate (rhboot/shim, shim.h
 * `struct cert_table`). It is the CA whose signatures shim accepts for GRUB and the kernel.
 */
export function shimVendorCertificate(b: Buffer): X509Certificate | undefined {
  const h = peHeaders(b);
  const s = h?.sections.find((x) => x.name === ".vendor_cert");
  if (!s || s.rawOffset + 16 > b.length) return undefined;
  const size = b.readUInt32LE(s.rawOffset);
  const at = s.rawOffset + b.readUInt32LE(s.rawOffset + 8);
  if (size === 0 || at + size > b.length) return undefined;
  try {
    return new X509Certificate(b.subarray(at, at + size));
  } catch {
    return undefined;
  }
}

/** The CN of a certificate's subject or issuer ("CN=Debian Secure Boot CA" -> that name). */
export function commonName(dn: string): string {
  return /(?:^|\n)CN=([^\n]*)/.exec(dn)?.[1] ?? dn.replace(/\n/g, ", ");
}

/**
 * True when `sig`'s signer certificate was issued by `ca` and its signature checks with
 * `ca`'s key (X509Certificate.checkIssued + verify). This is the certificate chain shim
 * checks; the image digest inside the signature is not recomputed here (shim does that).
 */
export function signedBy(sig: AuthenticodeSignature, ca: X509Certificate): boolean {
  const s = sig.signer;
  if (!s) return false;
  try {
    return s.checkIssued(ca) && s.verify(ca.publicKey);
  } catch {
    return false;
  }
}

/** The x86 Linux boot protocol header of a bzImage (Documentation/arch/x86/boot.rst). */
export interface KernelHeader {
  /** The kernel's version string (kernel_version field), e.g. "6.1.0-57-amd64 (debian-kernel@…) #1 SMP …". */
  version?: string;
  /** Boot protocol version, e.g. "2.15". */
  protocol: string;
  /** The image is also a PE/COFF EFI application (CONFIG_EFI_STUB), which GRUB's UEFI `linux` command wants. */
  efiStub: boolean;
}

/** The bzImage header, or undefined when the file is not an x86 Linux kernel ("HdrS" at 0x202). */
export function kernelHeader(b: Buffer): KernelHeader | undefined {
  if (b.length < 0x270 || b.toString("latin1", 0x202, 0x206) !== "HdrS") return undefined;
  const proto = b.readUInt16LE(0x206);
  let version: string | undefined;
  const vOff = b.readUInt16LE(0x20e);
  if (vOff !== 0 && vOff + 0x200 < b.length) {
    const s = b.subarray(vOff + 0x200, Math.min(b.length, vOff + 0x200 + 256));
    const end = s.indexOf(0);
    version = s.toString("latin1", 0, end < 0 ? s.length : end);
  }
  return { version, protocol: `${proto >> 8}.${proto & 0xff}`, efiStub: isPeImage(b) };
}
