import { VmhostClient, type Api } from "../../packages/sdk/src/index.js";
import { httpsTransport } from "../../packages/sdk/src/node.js";
import { ServiceClient } from "../service/client.js";
import { RemoteStore } from "./remotes.js";

/** Where the CLI's requests go: the local vmhostd (unix socket) or a trusted remote host (`--remote NAME`, VMHOST_REMOTE). */
export class Connection {
  private constructor(
    readonly client: VmhostClient,
    /** Set for the local host: it can start vmhostd and hand it host paths. */
    readonly local: ServiceClient | undefined,
    readonly remote: string | undefined,
  ) {}

  static async open(remote: string | undefined): Promise<Connection> {
    if (!remote) {
      const local = new ServiceClient();
      return new Connection(local.sdk, local, undefined);
    }
    const r = await new RemoteStore().get(remote);
    const client = new VmhostClient(
      httpsTransport({
        url: r.url,
        serverCertificate: r.serverCertificate,
        ...(r.clientKey && r.clientCert ? { clientKey: r.clientKey, clientCert: r.clientCert } : {}),
        ...(r.token ? { token: r.token } : {}),
      }),
    );
    return new Connection(client, undefined, remote);
  }

  get api(): Api {
    return this.client.api;
  }

  close(): void {
    this.client.close();
  }
}
