// A real, certified OpenID provider (npm `oidc-provider`) for the integration tests.
//
//   node oidc-idp.mjs SETTINGS.json
//
// SETTINGS: { "port": 0, "clients": [...oidc-provider client metadata],
//             "users": { "alice": { "password": "...", "claims": {...}, "amr": [...] } },
//             "ttl": { "IdToken": 3600, "AccessToken": 3600, "RefreshToken": 86400 } }
//
// Prints `listening <port>` once it accepts connections. People sign in on a plain form
// (`login`, `password`) posted to /interaction/<uid>/login; consent is implied (first-party).
// Sign-out at the provider asks to confirm on a form (`xsrf`, `logout=yes`).

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const settings = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = settings.users;

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const server = createServer();
await new Promise((resolve) => server.listen(settings.port ?? 0, '127.0.0.1', resolve));
const port = server.address().port;
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: settings.clients,
  claims: {
    // How the person authenticated, when the provider knows (a user's `amr`, `acr`).
    openid: ['sub', 'amr', 'acr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  conformIdTokenClaims: false,
  cookies: { keys: ['drawbridge-tests-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        const action = /action="([^"]+)"/.exec(form)[1];
        const xsrf = /name="xsrf" value="([^"]+)"/.exec(form)[1];
        ctx.body = `<!DOCTYPE html><title>Sign out</title>
<form id="op.logoutForm" method="post" action="${action}">
<input type="hidden" name="xsrf" value="${xsrf}">
<button type="submit" name="logout" value="yes">Sign out</button></form>`;
      },
    },
  },
  pkce: { required: () => true },
  ttl: {
    IdToken: settings.ttl?.IdToken ?? 3600,
    AccessToken: settings.ttl?.AccessToken ?? 3600,
    RefreshToken: settings.ttl?.RefreshToken ?? 86400,
    AuthorizationCode: 60,
    Interaction: 600,
    Session: 86400,
    Grant: 86400,
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  findAccount: async (ctx, id) => {
    const user = users[id];
    if (!user) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...user.claims }) };
  },
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const found = await ctx.oidc.provider.Grant.find(grantId);
      if (found) return found;
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid offline_access email profile groups');
    await grant.save();
    return grant;
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
});

const callback = provider.callback();

async function interaction(req, res) {
  const match = /^\/interaction\/([^/]+)(\/login)?$/.exec(req.url.split('?')[0]);
  if (!match) return false;
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') {
    res.setHeader('content-type', 'text/html; charset=utf-8');
    res.end(`<!DOCTYPE html><title>Sign in</title>
<form method="post" action="/interaction/${escape(details.uid)}/login">
<label>User <input name="login"></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Sign in</button></form>`);
    return true;
  }
  let body = '';
  for await (const chunk of req) body += chunk;
  const form = new URLSearchParams(body);
  const user = users[form.get('login')];
  if (!user || user.password !== form.get('password')) {
    res.statusCode = 403;
    res.end('wrong user or password');
    return true;
  }
  // A user's `amr` and `acr` (settings) say how the provider authenticated them: what an
  // ID token reports of a second factor done here.
  const login = { accountId: form.get('login') };
  if (user.amr) login.amr = user.amr;
  if (user.acr) login.acr = user.acr;
  await provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
  return true;
}

server.on('request', async (req, res) => {
  try {
    if (await interaction(req, res)) return;
  } catch (e) {
    res.statusCode = 400;
    res.end(String(e));
    return;
  }
  callback(req, res);
});

console.log(`listening ${port}`);
