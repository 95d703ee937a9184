// Runs DnsTestServer (dns-server.ts) as a process, for the e2e rig's namespaces:
//   node dns-server-main.ts <address> <port> '<zone as JSON: { name: Behaviour }>'
// Prints "listening <address>:<port>" once bound; runs until killed.

import { DnsTestServer, type Behaviour } from './dns-server.ts';

const [address, port, zone] = process.argv.slice(2);
if (address === undefined || port === undefined || zone === undefined) {
  console.error('usage: dns-server-main.ts <address> <port> <zone JSON>');
  process.exit(2);
}
const server = await DnsTestServer.start(address, Number(port));
for (const [name, b] of Object.entries(JSON.parse(zone) as Record<string, Behaviour>)) server.set(name, b);
console.log(`listening ${server.server}`);
