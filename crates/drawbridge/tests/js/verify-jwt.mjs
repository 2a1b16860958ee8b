// Verifies a JWT against a JWK Set fetched from a URL, with jose (an implementation
// independent of Drawbridge's), and prints its header and payload as one JSON line.
// Usage: node verify-jwt.mjs JWKS_URL ISSUER AUDIENCE TOKEN
// Exits 1 with the reason on stderr when the token does not verify.
import { createRemoteJWKSet, jwtVerify } from "jose";

const [jwksUrl, issuer, audience, token] = process.argv.slice(2);
try {
  const jwks = createRemoteJWKSet(new URL(jwksUrl));
  const { payload, protectedHeader } = await jwtVerify(token, jwks, {
    issuer,
    audience,
    algorithms: ["ES256", "EdDSA"],
  });
  console.log(JSON.stringify({ header: protectedHeader, payload }));
} catch (e) {
  console.error(`${e.code ?? "error"}: ${e.message}`);
  process.exit(1);
}
