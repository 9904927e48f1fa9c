// oidc-provider as the authorization server of the interoperability tests.
//
// Listens on 127.0.0.1 at a free port, builds the issuer from that port, and
// prints one JSON line {"issuer": ...} on stdout once it accepts requests.
// The client is read from FLOWENGINE_CLIENT_ID, FLOWENGINE_CLIENT_SECRET and
// FLOWENGINE_REDIRECT_URI. Users sign in through the provider's built-in
// development login and consent pages (devInteractions), where any login
// and password are accepted. SIGTERM or SIGINT stops the server.

import { randomBytes } from 'node:crypto';
import http from 'node:http';
import process from 'node:process';

import Provider from 'oidc-provider';

function requiredEnv(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`server.mjs: environment variable ${name} is missing; set it`);
    process.exit(2);
  }
  return value;
}

function configuration() {
  return {
    clients: [
      {
        client_id: requiredEnv('FLOWENGINE_CLIENT_ID'),
        client_secret: requiredEnv('FLOWENGINE_CLIENT_SECRET'),
        redirect_uris: [requiredEnv('FLOWENGINE_REDIRECT_URI')],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    // Every account exists and has only a subject identifier.
    async findAccount(ctx, sub) {
      return { accountId: sub, async claims() { return { sub }; } };
    },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    features: {
      devInteractions: { enabled: true },
      revocation: { enabled: true },
      userinfo: { enabled: true },
    },
    // The default requires PKCE only from public clients.
    pkce: { required: () => true },
    // The default rotates refresh tokens of confidential clients only after
    // 70 % of their lifetime has passed; rotate on every use instead.
    rotateRefreshToken: true,
    scopes: ['openid', 'offline_access'],
  };
}

const server = http.createServer();

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}

process.on('SIGTERM', stop);
process.on('SIGINT', stop);

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, configuration());
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
