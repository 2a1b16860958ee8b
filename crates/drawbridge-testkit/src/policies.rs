//! Cedar policies the policy tests share: the examples of the authorization issue (tenant
//! isolation, a parameter limit, group writes with an overriding `forbid`, service to
//! service), and the upstreams and routes they are written for ([`routes`]).

/// Upstreams `shop` and `ledger` at these addresses, and the routes the policies name, in
/// this order: `tenant-orders` (`/tenants/{tenant}/orders`), `refunds` (query `amount` as a
/// Long, header `x-region`), `ledger` (upstream `ledger`; authenticators `workloads`, then
/// `corp`) and `reports`; every other route authenticates with `corp`.
pub fn routes(shop: &str, ledger: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "shop"
endpoints = ["{shop}"]

[[upstreams]]
name = "ledger"
endpoints = ["{ledger}"]

[[routes]]
name = "tenant-orders"
prefix = "/tenants/{{tenant}}/orders"
upstream = "shop"
authenticate = ["corp"]

[[routes]]
name = "refunds"
path = "/refunds"
upstream = "shop"
authenticate = ["corp"]
[routes.context]
query = {{ amount = "Long" }}
headers = ["x-region"]

[[routes]]
name = "ledger"
prefix = "/ledger"
upstream = "ledger"
authenticate = ["workloads", "corp"]

[[routes]]
name = "reports"
prefix = "/reports"
upstream = "shop"
authenticate = ["corp"]
"#
    )
}

/// Tenant isolation, the refund limit and the reports rules.
pub const SHOP: &str = r#"
@id("tenant-read")
permit (principal, action in Action::"read", resource == Route::"tenant-orders")
when {
  principal has tenant && context.params has tenant &&
  context.params.tenant == principal.tenant
};

@id("refunds-billing")
permit (principal in Group::"billing", action == Action::"POST", resource == Route::"refunds")
when { context.query has amount && context.query.amount < 1000 };

@id("reports-read")
permit (principal is User, action in Action::"read", resource == Route::"reports");

@id("reports-write")
permit (principal in Group::"editors", action in Action::"write", resource == Route::"reports");

@id("reports-no-delete")
forbid (principal, action == Action::"DELETE", resource == Route::"reports")
unless { principal in Group::"admins" };
"#;

/// Who may talk to whom: the billing service reads the ledger.
pub const SERVICES: &str = r#"
@id("billing-reads-ledger")
permit (
  principal == Service::"workloads/spiffe://prod/billing",
  action == Action::"GET",
  resource in Upstream::"ledger"
);
"#;
