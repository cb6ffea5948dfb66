import { execFile } from "node:child_process";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";

const execFileP = promisify(execFile);

/**
 * Throw-away x509 material for one live migration (QEMU's migration and NBD TLS: crypto/
 * tlscredsx509.c). QEMU wants a CA certificate (CA:TRUE, keyCertSign) and, separately, a server
 * and a client certificate signed by it (CA:FALSE, digitalSignature + keyEncipherment, the right
 * extended key usage); the server verifies the client against the CA. The source makes all of it,
 * keeps the client half and the CA key, and hands the server half to the destination over the
 * already authenticated, encrypted host-to-host API; everything is deleted after the move.
 * Made with openssl(1) from argv arrays (no shell).
 */
export interface MigrationTls {
  /** PEM texts. */
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** The name the client checks the server's certificate against (an IP address or DNS name). */
  serverName: string;
}

async function openssl(args: string[]): Promise<void> {
  await execFileP("openssl", args, { timeout: 60_000 });
}

/** Makes a CA and a server (for `serverName`) and a client certificate signed by it, valid for a day. */
export async function makeMigrationTls(workDir: string, serverName: string): Promise<MigrationTls> {
  await mkdir(workDir, { recursive: true, mode: 0o700 });
  const f = (n: string) => join(workDir, n);
  try {
    await openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f("ca-key.pem"), "-out", f("ca-cert.pem"), "-days", "1", "-subj", "/CN=vmhost migration CA",
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    const san = isIP(serverName) ? `IP:${serverName}` : `DNS:${serverName}`;
    for (const [who, eku, extra] of [["server", "serverAuth", `subjectAltName=${san}\n`], ["client", "clientAuth", ""]] as const) {
      await openssl(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f(`${who}-key.pem`), "-out", f(`${who}.csr`), "-subj", `/CN=${who === "server" ? serverName : "vmhost migration client"}`]);
      await writeFile(f(`${who}.ext`), `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=${eku}\n${extra}`);
      await openssl(["x509", "-req", "-in", f(`${who}.csr`), "-CA", f("ca-cert.pem"), "-CAkey", f("ca-key.pem"), "-CAcreateserial", "-out", f(`${who}-cert.pem`), "-days", "1", "-extfile", f(`${who}.ext`)]);
    }
    const read = (n: string) => readFile(f(n), "utf8");
    return {
      caCert: await read("ca-cert.pem"),
      serverCert: await read("server-cert.pem"),
      serverKey: await read("server-key.pem"),
      clientCert: await read("client-cert.pem"),
      clientKey: await read("client-key.pem"),
      serverName,
    };
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

/** Writes one endpoint's credentials directory as QEMU's tls-creds-x509 reads it (files 0600). */
export async function writeTlsCredsDir(dir: string, tls: Pick<MigrationTls, "caCert"> & ({ serverCert: string; serverKey: string } | { clientCert: string; clientKey: string })): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(join(dir, "ca-cert.pem"), tls.caCert, { mode: 0o600 });
  if ("serverCert" in tls) {
    await writeFile(join(dir, "server-cert.pem"), tls.serverCert, { mode: 0o600 });
    await writeFile(join(dir, "server-key.pem"), tls.serverKey, { mode: 0o600 });
  } else {
    await writeFile(join(dir, "client-cert.pem"), tls.clientCert, { mode: 0o600 });
    await writeFile(join(dir, "client-key.pem"), tls.clientKey, { mode: 0o600 });
  }
}
