-- nginx's full access path in the benchmark: an RS256 bearer token checked in process on
-- every request (signature through the OpenSSL nginx is linked with, issuer, audience,
-- expiry), as a Lua JWT module does it; no token cache. Loaded by bench/run.sh.
local ffi = require "ffi"
local cjson = require "cjson.safe"

ffi.cdef [[
typedef struct bio_st BIO;
typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_md_ctx_st EVP_MD_CTX;
typedef struct evp_md_st EVP_MD;
BIO *BIO_new_mem_buf(const void *buf, int len);
int BIO_free(BIO *a);
EVP_PKEY *PEM_read_bio_PUBKEY(BIO *bp, EVP_PKEY **x, void *cb, void *u);
EVP_MD_CTX *EVP_MD_CTX_new(void);
void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
const EVP_MD *EVP_sha256(void);
int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, void **pctx, const EVP_MD *type, void *e, EVP_PKEY *pkey);
int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen,
                     const unsigned char *tbs, size_t tbslen);
]]
local C = ffi.C

local M = {}
local key, issuer, audience

function M.init(pem_path, iss, aud)
  local f = assert(io.open(pem_path, "rb"))
  local pem = f:read("*a")
  f:close()
  local bio = C.BIO_new_mem_buf(pem, #pem)
  key = C.PEM_read_bio_PUBKEY(bio, nil, nil, nil)
  C.BIO_free(bio)
  assert(key ~= nil, "unreadable public key")
  issuer, audience = iss, aud
end

local function b64url(s)
  s = s:gsub("-", "+"):gsub("_", "/")
  local pad = #s % 4
  if pad == 2 then s = s .. "==" elseif pad == 3 then s = s .. "=" end
  return ngx.decode_base64(s)
end

local function verify(token)
  local h, p, s = token:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]+)$")
  if not h then return false end
  local header = cjson.decode(b64url(h) or "")
  if not header or header.alg ~= "RS256" then return false end
  local sig = b64url(s)
  if not sig then return false end
  local signed = h .. "." .. p
  local ctx = C.EVP_MD_CTX_new()
  local ok = C.EVP_DigestVerifyInit(ctx, nil, C.EVP_sha256(), nil, key) == 1
    and C.EVP_DigestVerify(ctx, sig, #sig, signed, #signed) == 1
  C.EVP_MD_CTX_free(ctx)
  if not ok then return false end
  local claims = cjson.decode(b64url(p) or "")
  if not claims or claims.iss ~= issuer or type(claims.exp) ~= "number" or claims.exp <= ngx.time() then
    return false
  end
  local aud = claims.aud
  if type(aud) == "table" then
    for _, a in ipairs(aud) do if a == audience then return true end end
    return false
  end
  return aud == audience
end

function M.access()
  local auth = ngx.var.http_authorization
  local token = auth and auth:match("^Bearer%s+(.+)$")
  if not token or not verify(token) then
    return ngx.exit(ngx.HTTP_UNAUTHORIZED)
  end
end

return M
