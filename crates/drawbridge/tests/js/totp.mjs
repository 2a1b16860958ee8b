// Computes TOTP codes with otpauth (an implementation independent of Drawbridge's) from an
// otpauth:// URI, at now plus each offset in seconds, one code per line.
// Usage: node totp.mjs URI [OFFSET...]
import * as OTPAuth from "otpauth";

const [uri, ...offsets] = process.argv.slice(2);
const totp = OTPAuth.URI.parse(uri);
const now = Date.now();
for (const o of offsets.length ? offsets : ["0"]) {
  console.log(totp.generate({ timestamp: now + Number(o) * 1000 }));
}
