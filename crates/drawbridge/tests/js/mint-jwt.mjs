// Makes an issuer for load tests: an RS256 and an ES256 key pair, their JWK Set written to
// a file, and one token per key, printed as `RS256 <token>` and `ES256 <token>` lines.
// Usage: node mint-jwt.mjs JWKS_PATH ISSUER AUDIENCE
import { writeFileSync } from "node:fs";
import { SignJWT, exportJWK, generateKeyPair } from "jose";

const [jwksPath, issuer, audience] = process.argv.slice(2);
const keys = [];
for (const alg of ["RS256", "ES256"]) {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(publicKey);
  keys.push({ ...jwk, kid: `bench-${alg}`, alg, use: "sig" });
  const token = await new SignJWT({ groups: ["bench"], tenant: "load" })
    .setProtectedHeader({ alg, kid: `bench-${alg}`, typ: "JWT" })
    .setIssuer(issuer)
    .setAudience(audience)
    .setSubject("load-tester")
    .setIssuedAt()
    .setExpirationTime("50m")
    .sign(privateKey);
  console.log(`${alg} ${token}`);
}
writeFileSync(jwksPath, JSON.stringify({ keys }));
