// Conduit development OIDC identity provider.
//
// DEV / TEST ONLY: plaintext passwords, in-memory storage, http issuer on loopback.
// Usage: node deploy/dev-idp/server.js CONFIG.json   (see README.md for the config format)

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import process from 'node:process';

import Provider, { errors } from 'oidc-provider';

const ACR_PWD = 'urn:conduit:pwd';
const ACR_MFA = 'urn:conduit:mfa';
const MAX_FORM_BYTES = 16 * 1024;

class ConfigError extends Error {}

function fail(message) {
  process.stderr.write(`dev-idp: ${message}\n`);
  process.exit(2);
}

function readJson(path, what) {
  let text;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${what} ${JSON.stringify(path)}: ${err.message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${what} ${JSON.stringify(path)} is not valid JSON: ${err.message}`);
  }
}

function requireString(obj, key, where) {
  const value = obj[key];
  if (typeof value !== 'string' || value.length === 0) {
    throw new ConfigError(`${where}: "${key}" must be a non-empty string`);
  }
  return value;
}

function requireStringList(obj, key, where, { optional = false } = {}) {
  const value = obj[key];
  if (value === undefined && optional) return [];
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string' || v.length === 0)) {
    throw new ConfigError(`${where}: "${key}" must be a list of non-empty strings`);
  }
  return value;
}

function isPlainObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function loadUsers(path) {
  const users = readJson(path, 'users file');
  if (!Array.isArray(users)) throw new ConfigError('users file: must be a JSON list of users');
  const bySub = new Map();
  const byUsername = new Map();
  users.forEach((user, i) => {
    const where = `users file entry ${i}`;
    if (!isPlainObject(user)) throw new ConfigError(`${where}: must be an object`);
    for (const key of ['sub', 'username', 'password', 'email', 'name']) requireString(user, key, where);
    requireStringList(user, 'groups', where, { optional: true });
    for (const key of ['vendor_org', 'otp']) {
      if (user[key] !== undefined) requireString(user, key, where);
    }
    if (user.email_verified !== undefined && typeof user.email_verified !== 'boolean') {
      throw new ConfigError(`${where}: "email_verified" must be a boolean`);
    }
    if (user.otp_optional !== undefined && (typeof user.otp_optional !== 'boolean' || user.otp === undefined)) {
      throw new ConfigError(`${where}: "otp_optional" must be a boolean and needs "otp"`);
    }
    if (bySub.has(user.sub)) throw new ConfigError(`${where}: duplicate sub ${user.sub}`);
    if (byUsername.has(user.username)) throw new ConfigError(`${where}: duplicate username ${user.username}`);
    bySub.set(user.sub, user);
    byUsername.set(user.username, user);
  });
  return { bySub, byUsername };
}

function loadConfig(path) {
  const cfg = readJson(path, 'config file');
  if (!isPlainObject(cfg)) throw new ConfigError('config file: must be a JSON object');
  const issuer = requireString(cfg, 'issuer', 'config');
  let issuerUrl;
  try {
    issuerUrl = new URL(issuer);
  } catch {
    throw new ConfigError(`config: "issuer" is not a URL: ${issuer}`);
  }
  if (issuerUrl.search || issuerUrl.hash) throw new ConfigError('config: "issuer" must not have a query or fragment');
  const { port } = cfg;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new ConfigError('config: "port" must be an integer in 1..65535');
  }
  const host = cfg.host === undefined ? '127.0.0.1' : requireString(cfg, 'host', 'config');

  const jwks = readJson(requireString(cfg, 'jwks_path', 'config'), 'JWKS file');
  if (!isPlainObject(jwks) || !Array.isArray(jwks.keys) || jwks.keys.length === 0) {
    throw new ConfigError('JWKS file: must be {"keys": [...]} with at least one key');
  }
  jwks.keys.forEach((key, i) => {
    if (!isPlainObject(key) || key.kty !== 'RSA' || typeof key.d !== 'string') {
      throw new ConfigError(`JWKS file key ${i}: must be a private RSA JWK (kty RSA with "d")`);
    }
    if (typeof key.kid !== 'string' || !key.kid) throw new ConfigError(`JWKS file key ${i}: missing "kid"`);
    if (key.alg !== undefined && key.alg !== 'RS256') {
      throw new ConfigError(`JWKS file key ${i}: alg must be RS256`);
    }
  });

  const users = loadUsers(requireString(cfg, 'users_path', 'config'));

  if (!Array.isArray(cfg.clients) || cfg.clients.length === 0) {
    throw new ConfigError('config: "clients" must be a non-empty list');
  }
  const seen = new Set();
  const clients = cfg.clients.map((c, i) => {
    const where = `config clients[${i}]`;
    if (!isPlainObject(c)) throw new ConfigError(`${where}: must be an object`);
    const clientId = requireString(c, 'client_id', where);
    if (seen.has(clientId)) throw new ConfigError(`${where}: duplicate client_id ${clientId}`);
    seen.add(clientId);
    const redirectUris = requireStringList(c, 'redirect_uris', where);
    if (redirectUris.length === 0) throw new ConfigError(`${where}: "redirect_uris" must not be empty`);
    const client = {
      client_id: clientId,
      redirect_uris: redirectUris,
      post_logout_redirect_uris: requireStringList(c, 'post_logout_redirect_uris', where, { optional: true }),
      response_types: ['code'],
      grant_types: ['authorization_code'],
      id_token_signed_response_alg: 'RS256',
    };
    if (c.client_secret !== undefined) {
      client.client_secret = requireString(c, 'client_secret', where);
      client.token_endpoint_auth_method = c.token_endpoint_auth_method === undefined
        ? 'client_secret_basic'
        : requireString(c, 'token_endpoint_auth_method', where);
      if (!['client_secret_basic', 'client_secret_post'].includes(client.token_endpoint_auth_method)) {
        throw new ConfigError(`${where}: token_endpoint_auth_method must be client_secret_basic or client_secret_post`);
      }
    } else {
      if (c.token_endpoint_auth_method !== undefined && c.token_endpoint_auth_method !== 'none') {
        throw new ConfigError(`${where}: a client without client_secret is public (token_endpoint_auth_method none)`);
      }
      client.token_endpoint_auth_method = 'none';
    }
    return client;
  });

  const cookieKeys = requireStringList(cfg, 'cookie_keys', 'config');
  if (cookieKeys.length === 0) throw new ConfigError('config: "cookie_keys" must not be empty');

  return {
    issuer, port, host, jwks, users, clients, cookieKeys,
  };
}

// ---------------------------------------------------------------- HTML

function esc(value) {
  return String(value)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

const STYLE = 'body{font-family:sans-serif;max-width:24em;margin:3em auto}label{display:block;margin-top:.8em}'
  + 'input{width:100%;padding:.3em}button{margin-top:1em;padding:.4em 1em}'
  + '#login-error{color:#b00020;font-weight:bold}.note{color:#666;font-size:.85em}';

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>${STYLE}</style></head>
<body>
${body}
</body>
</html>`;
}

function loginPage({ uid, clientId, username = '', error }) {
  const errorHtml = error ? `<p id="login-error" role="alert">${esc(error)}</p>` : '';
  return page('Conduit dev IdP - sign in', `<h1>Conduit dev IdP</h1>
<p>Sign in to continue to <strong>${esc(clientId)}</strong>.</p>
${errorHtml}
<form id="login-form" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <label for="username">Username</label>
  <input id="username" name="username" type="text" value="${esc(username)}" required autofocus>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" required>
  <label for="otp">One-time code (if your account has one)</label>
  <input id="otp" name="otp" type="text" inputmode="numeric">
  <button id="login-submit" type="submit">Sign in</button>
</form>
<p class="note">Development identity provider: demo accounts only.</p>`);
}

// ---------------------------------------------------------------- helpers

function digestEquals(a, b) {
  const ha = crypto.createHash('sha256').update(String(a)).digest();
  const hb = crypto.createHash('sha256').update(String(b)).digest();
  return crypto.timingSafeEqual(ha, hb);
}

async function readForm(req) {
  const type = (req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/x-www-form-urlencoded') return new URLSearchParams();
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_FORM_BYTES) {
      const err = new Error('form too large');
      err.status = 413;
      throw err;
    }
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function accountClaims(user) {
  const claims = {
    sub: user.sub,
    email: user.email,
    email_verified: user.email_verified ?? true,
    name: user.name,
    preferred_username: user.username,
  };
  if (Array.isArray(user.groups) && user.groups.length > 0) claims.groups = [...user.groups];
  if (user.vendor_org) claims.vendor_org = user.vendor_org;
  return claims;
}

// ---------------------------------------------------------------- provider

function buildProvider(cfg) {
  const { users } = cfg;

  // No consent screen: every configured client is first-party, so the grant simply covers
  // whatever OIDC scopes/claims the current authorization request asks for.
  async function loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const accountId = oidc.session.accountId;
    const clientId = oidc.client.clientId;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(clientId);
    let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
    if (!grant || grant.accountId !== accountId || grant.clientId !== clientId) {
      grant = new oidc.provider.Grant({ accountId, clientId });
    }
    const scopes = [...(oidc.requestParamScopes || [])];
    if (scopes.length) grant.addOIDCScope(scopes.join(' '));
    const claims = [...(oidc.requestParamClaims || [])];
    if (claims.length) grant.addOIDCClaims(claims);
    await grant.save();
    return grant;
  }

  async function findAccount(_ctx, id) {
    const user = users.bySub.get(id);
    if (!user) return undefined;
    return {
      accountId: user.sub,
      async claims() {
        return accountClaims(user);
      },
    };
  }

  async function logoutSource(ctx, form) {
    // Auto-submit the confirmation form (logout=yes ends the whole IdP session): no click needed.
    const autoForm = form.replace(
      '</form>',
      '<input type="hidden" name="logout" value="yes"/>'
        + '<noscript><button id="logout-submit" type="submit">Sign out</button></noscript></form>',
    );
    ctx.body = page('Conduit dev IdP - signing out', `<h1>Signing out…</h1>
${autoForm}
<script>document.getElementById('op.logoutForm').submit();</script>`);
  }

  async function postLogoutSuccessSource(ctx) {
    ctx.body = page('Conduit dev IdP - signed out', '<h1>Signed out</h1><p id="logout-done">You have been signed out.</p>');
  }

  async function renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Conduit dev IdP - error', `<h1>Error</h1>
<p id="idp-error">${esc(out.error)}</p>
${out.error_description ? `<p id="idp-error-description">${esc(out.error_description)}</p>` : ''}`);
  }

  const provider = new Provider(cfg.issuer, {
    clients: cfg.clients,
    jwks: cfg.jwks,
    findAccount,
    loadExistingGrant,
    renderError,
    scopes: ['openid', 'profile', 'email', 'groups'],
    claims: {
      // acr/amr/auth_time come from the login session; listing them under openid puts them in
      // every ID token (oidc-provider otherwise only emits acr when acr_values were requested).
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      profile: ['name', 'preferred_username'],
      email: ['email', 'email_verified'],
      groups: ['groups', 'vendor_org'],
    },
    acrValues: [ACR_PWD, ACR_MFA],
    conformIdTokenClaims: false,
    responseTypes: ['code'],
    pkce: { required: () => true },
    cookies: {
      keys: cfg.cookieKeys,
      // Distinct names: cookies ignore ports, so the IdP and the broker on 127.0.0.1 share a jar.
      names: {
        session: 'devidp_session',
        interaction: 'devidp_interaction',
        resume: 'devidp_interaction_resume',
      },
    },
    interactions: {
      url(_ctx, interaction) {
        return `/interaction/${interaction.uid}`;
      },
    },
    features: {
      devInteractions: { enabled: false },
      userinfo: { enabled: true },
      revocation: { enabled: true },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
    },
    ttl: {
      AccessToken: 600,
      AuthorizationCode: 120,
      IdToken: 600,
      Interaction: 900,
      Session: 8 * 3600,
      Grant: 8 * 3600,
    },
  });

  provider.on('server_error', (_ctx, err) => {
    process.stderr.write(`dev-idp: server_error: ${err && err.stack ? err.stack : err}\n`);
  });

  // ------------------------------------------------------------ login interaction (Koa)
  const interactionPath = /^\/interaction\/([A-Za-z0-9_-]{1,128})(\/login)?$/;

  provider.use(async (ctx, next) => {
    const match = interactionPath.exec(ctx.path);
    if (!match) return next();
    ctx.set('cache-control', 'no-store');
    ctx.set('x-frame-options', 'DENY');
    const [, uid, isLogin] = match;
    const method = ctx.method;
    if (!((method === 'GET' && !isLogin) || (method === 'POST' && isLogin))) {
      ctx.status = 405;
      ctx.type = 'text';
      ctx.body = 'method not allowed';
      return undefined;
    }

    let details;
    try {
      details = await provider.interactionDetails(ctx.req, ctx.res);
    } catch (err) {
      if (err instanceof errors.SessionNotFound || err instanceof errors.InvalidRequest) {
        ctx.status = 400;
        ctx.type = 'html';
        ctx.body = page('Conduit dev IdP - error', `<h1>Error</h1>
<p id="idp-error">This sign-in request has expired or is unknown. Start again from the application.</p>`);
        return undefined;
      }
      throw err;
    }
    if (details.uid !== uid) {
      ctx.status = 400;
      ctx.type = 'text';
      ctx.body = 'interaction mismatch';
      return undefined;
    }
    const clientId = details.params.client_id;
    const promptName = details.prompt.name;

    if (promptName !== 'login') {
      // Consent (should not happen: loadExistingGrant covers the request) - grant automatically.
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId });
      const { missingOIDCScope, missingOIDCClaims } = details.prompt.details;
      if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
      if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
      const grantId = await grant.save();
      const to = await provider.interactionResult(ctx.req, ctx.res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      ctx.status = 303;
      ctx.redirect(to);
      return undefined;
    }

    if (method === 'GET') {
      ctx.type = 'html';
      ctx.body = loginPage({ uid, clientId, username: details.params.login_hint || '' });
      return undefined;
    }

    let form;
    try {
      form = await readForm(ctx.req);
    } catch (err) {
      ctx.status = err.status || 400;
      ctx.type = 'text';
      ctx.body = 'bad form';
      return undefined;
    }
    const username = (form.get('username') || '').trim();
    const password = form.get('password') || '';
    const otp = (form.get('otp') || '').trim();
    const user = users.byUsername.get(username);
    // Always compare against something so timing does not reveal whether the user exists.
    const passwordOk = digestEquals(password, user ? user.password : '\u0000no-such-user') && !!user;
    if (!passwordOk) {
      ctx.status = 200;
      ctx.type = 'html';
      ctx.body = loginPage({
        uid, clientId, username, error: 'Invalid username or password',
      });
      return undefined;
    }
    let amr = ['pwd'];
    let acr = ACR_PWD;
    // otp_optional: signing in without a code is allowed (amr pwd); a code, if typed, must be right.
    if (user.otp !== undefined && !(user.otp_optional === true && !otp)) {
      if (!otp || !digestEquals(otp, user.otp)) {
        ctx.status = 200;
        ctx.type = 'html';
        ctx.body = loginPage({
          uid, clientId, username, error: 'Invalid username or password: a valid one-time code is required for this account',
        });
        return undefined;
      }
      amr = ['pwd', 'otp', 'mfa'];
      acr = ACR_MFA;
    }
    const to = await provider.interactionResult(ctx.req, ctx.res, {
      login: {
        accountId: user.sub, acr, amr, remember: true,
      },
    }, { mergeWithLastSubmission: false });
    ctx.status = 303;
    ctx.redirect(to);
    return undefined;
  });

  return provider;
}

// ---------------------------------------------------------------- main

function main() {
  const args = process.argv.slice(2);
  if (args.length !== 1) fail('usage: node server.js CONFIG.json');
  let cfg;
  let provider;
  try {
    cfg = loadConfig(args[0]);
    provider = buildProvider(cfg);
  } catch (err) {
    if (err instanceof ConfigError) fail(`bad config: ${err.message}`);
    fail(`bad config: ${err && err.message ? err.message : err}`);
  }

  const server = http.createServer(provider.callback());
  server.on('error', (err) => fail(`cannot listen on ${cfg.host}:${cfg.port}: ${err.message}`));
  server.listen(cfg.port, cfg.host, () => {
    process.stdout.write(`dev-idp listening on ${cfg.issuer}\n`);
  });

  const shutdown = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

main();
