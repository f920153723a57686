# Conduit's default access policy: who may connect to, request or approve access to an asset.
#
# Query data.conduit.access.decision (contract: docs/policy.md). It is always defined.
#
# An allow is one conjunction of requirements (the first body of `decision`, then `allowed`
# for the kind of action). Each requirement is a function of the input that, when met,
# returns the text explaining it (the allow reasons). Next to every requirement, deny rules
# fire exactly when it is not met and say why; they are evaluated only for a deny. The
# requirements are functions rather than rules because regorus calls a function several
# times faster than it evaluates a rule (see docs/policy.md).
#
# Compiled-VM rule (regorus's RVM, the broker's fast evaluator, docs/policy.md): a value that
# may be undefined is bound with `=`, never `:=`, and a rule head is built only from values the
# body has bound. The RVM does not fail a body on `x := <undefined>` (it goes on with x
# undefined: the rule then comes out undefined instead of trying its `else`, a set rule gains
# an undefined element, `not x == ...` holds). The interpreter treats both spellings alike.
package conduit.access

import rego.v1

import data.conduit.calendar
import data.conduit.ot

decision := d if {
	input_ok
	now := calendar.ns(input.context.now)
	not vendor_locked_out(input.user)
	input.asset.purdue_level != 0
	role = role_basis(input.user, input.asset, input.action.kind)
	contract = contract_basis(input.user, input.asset, input.action.kind, now)
	d = allowed(input, input.action.kind, now, [role, contract])
} else := {"allow": false, "reasons": deny_reasons, "obligations": denied_obligations}

allow := decision.allow

# allowed(input, kind, now, reasons so far): the allow decision when the kind's own
# requirements hold (below, per kind), else undefined.
allowed(inp, kind, now, common) := decision if {
	kind in ["ssh", "sftp", "tcp", "web_terminal"]
	mfa = mfa_basis(inp.user, inp.asset, inp.action.operation_class)
	inp.context.agent_online == true
	agent := sprintf("agent for %s is online", [inp.asset.name])
	grant = grant_basis(inp, now)
	endpoint = endpoint_basis(inp)
	reasons := array.concat(common, [mfa, grant.reason, agent, endpoint])
	decision := allow_decision(reasons, granted_obligations(inp, grant.ends_ns, now))
}

allowed(inp, "request", now, common) := decision if {
	op := inp.action.operation_class
	scope = scope_basis(inp)
	obligations := granted_obligations(inp, null, now)
	request := sprintf("request for %s on %s needs %d approval(s)", [op, inp.asset.name, obligations.approvals_required])
	decision := allow_decision(array.concat(common, [request, scope]), obligations)
}

allowed(inp, "approve", now, common) := decision if {
	approvable(inp.grant, inp.user)
	scope = scope_basis(inp)
	approval := sprintf("approving grant %s requested by %s", [inp.grant.id, inp.grant.requester])
	decision := allow_decision(array.concat(common, [approval, scope]), granted_obligations(inp, null, now))
}

allow_decision(reasons, obligations) := {"allow": true, "reasons": sorted, "obligations": obligations} if {
	sorted := sort([r | some r in reasons; r != ""])
}

deny_reasons := sort(deny) if count(deny) > 0
else := ["denied by default: no rule allows this action"]

# Malformed or missing input fields (input.rego).
deny contains problem if {
	not input_ok
	some problem in malformed
}

# ---- emergency lockout ----------------------------------------------------------------------

# Every action of a user with role vendor is denied unless data.plant.lockout.vendors is false.
vendor_locked_out(user) if {
	"vendor" in user.roles
	not data.plant.lockout.vendors == false
}

locked_out if vendor_locked_out(input.user)

deny contains reason if {
	locked_out
	data.plant.lockout.vendors == true
	reason := lockout_reason(object.get(data.plant.lockout, "reason", ""))
}

deny contains "emergency lockout assumed: data.plant.lockout.vendors is not set" if {
	locked_out
	not is_boolean(data.plant.lockout.vendors)
}

lockout_reason(why) := sprintf("emergency lockout: all vendor access is disabled (%s)", [why]) if {
	is_string(why)
	why != ""
} else := "emergency lockout: all vendor access is disabled"

# ---- Purdue level 0 -------------------------------------------------------------------------

deny contains sprintf("%s is at Purdue level 0 (process and field devices): level 0 is never reachable through conduit", [asset_name]) if {
	input.asset.purdue_level == 0
}

# ---- roles ----------------------------------------------------------------------------------

# Connections and requests: role vendor, or admin (for themselves). Approvals: role admin
# (any asset) or role approver in the asset's owner group.
role_basis(user, asset, kind) := sprintf("role vendor may %s", [kind]) if {
	kind in ["ssh", "sftp", "tcp", "web_terminal", "request"]
	"vendor" in user.roles
} else := sprintf("role admin may %s", [kind]) if {
	kind in ["ssh", "sftp", "tcp", "web_terminal", "request"]
	"admin" in user.roles
} else := reason if {
	kind == "approve"
	"admin" in user.roles
	reason = sprintf("role admin may approve any asset (%s)", [asset.name])
} else := reason if {
	kind == "approve"
	"approver" in user.roles
	asset.owner_group in user.groups
	reason = sprintf("approver is in owner group %s of %s", [asset.owner_group, asset.name])
}

deny contains sprintf("%s needs role vendor or admin", [input.action.kind]) if {
	input.action.kind in ["ssh", "sftp", "tcp", "web_terminal", "request"]
	not role_basis(input.user, input.asset, input.action.kind)
}

deny contains "approve needs role approver or admin" if {
	input.action.kind == "approve"
	not "approver" in input.user.roles
	not "admin" in input.user.roles
}

deny contains sprintf("approver is not in owner group %v of %s", [group, asset_name]) if {
	input.action.kind == "approve"
	"approver" in input.user.roles
	not role_basis(input.user, input.asset, "approve")
	group = input.asset.owner_group
}

# ---- vendor contracts -----------------------------------------------------------------------

# A vendor's connections and requests need a contract of the vendor's own organisation,
# valid now (valid_from <= now < valid_until), that names the asset (and, if it also names a
# site, the asset's site) or names the asset's site. Admins who are not vendors need none.
needs_contract(user, kind) if {
	kind in ["ssh", "sftp", "tcp", "web_terminal", "request"]
	"vendor" in user.roles
}

contract_basis(user, asset, kind, now) := basis if {
	needs_contract(user, kind)
	valid := [ref |
		some c in data.plant.vendor_orgs[user.vendor_org].contracts
		covers(c, asset)
		class_allowed(c)
		contract_current(c, now)
		ref = c.reference
	]
	count(valid) > 0
	basis = concat("", ["vendor contract ", concat(", ", valid), " covers ", sprintf("%v", [asset.name])])
} else := "" if not needs_contract(user, kind)

# data.plant is built by the broker from its database and trusted to be well formed; a
# contract without "site" or "asset" keys covers nothing.
covers(c, asset) if {
	c.asset in [asset.name, null]
	c.site in [asset.site, null]
	[c.asset, c.site] != [null, null]
}

# A contract's "operation_classes" lists the classes it allows; absent or empty: all.
class_allowed(c) if count(object.get(c, "operation_classes", [])) == 0

class_allowed(c) if input.action.operation_class in c.operation_classes

contract_current(c, now) if {
	calendar.ns(c.valid_from) <= now
	now < calendar.ns(c.valid_until)
}

contract_needed if needs_contract(input.user, input.action.kind)

covering_contracts contains ref if {
	some c in data.plant.vendor_orgs[input.user.vendor_org].contracts
	covers(c, input.asset)
	ref = c.reference
}

deny contains "vendor user has no vendor_org" if {
	contract_needed
	not is_string(input.user.vendor_org)
}

deny contains sprintf("no contract of vendor org %s covers %s", [input.user.vendor_org, asset_name]) if {
	contract_needed
	is_string(input.user.vendor_org)
	count(covering_contracts) == 0
}

class_contracts contains ref if {
	some c in data.plant.vendor_orgs[input.user.vendor_org].contracts
	covers(c, input.asset)
	class_allowed(c)
	ref = c.reference
}

deny contains concat("", ["contract ", refs, sprintf(" of vendor org %s for %s does not allow operation class %v", [input.user.vendor_org, asset_name, input.action.operation_class])]) if {
	contract_needed
	count(covering_contracts) > 0
	count(class_contracts) == 0
	refs := concat(", ", sort(covering_contracts))
}

deny contains concat("", ["contract ", refs, sprintf(" of vendor org %s for %s is not valid at %s", [input.user.vendor_org, asset_name, now])]) if {
	contract_needed
	count(class_contracts) > 0
	not contract_basis(input.user, input.asset, input.action.kind, checked_now)
	refs := concat(", ", sort(class_contracts))
	now = input.context.now
}

# ---- connections: agent, MFA, grant ---------------------------------------------------------

deny contains sprintf("agent for %s is offline", [asset_name]) if {
	is_connection
	not input.context.agent_online == true
}

# MFA (amr mfa, otp or hwk) exactly when the obligation require_mfa says so (obligations.rego:
# level 1-2 assets, and classes whose row in ot.rego sets require_mfa): one rule for what the
# approver is warned about, what the grant records and what a connection is refused for.
mfa_needed(asset, op) if require_mfa(asset.purdue_level, class_requires_mfa(op))

class_requires_mfa(op) := needed if {
	needed := ot.class(op).require_mfa
} else := false

mfa_basis(user, asset, op) := "" if {
	not mfa_needed(asset, op)
} else := concat("", ["MFA present (amr ", methods, ")"]) if {
	is_array(user.amr)
	present := [m | some m in user.amr; m in ["mfa", "otp", "hwk"]]
	count(present) > 0
	methods := concat(", ", present)
}

deny contains sprintf("%s to %s needs MFA: input.user.amr has none of mfa, otp, hwk", [input.action.kind, asset_name]) if {
	is_connection
	not mfa_basis(input.user, input.asset, input.action.operation_class)
}

# Every connection needs a grant, except an admin's (who is not a vendor) to level 3+. The
# grant must be approved or active, current (starts_at <= now < ends_at), the user's own, and
# if maintenance_window_only, used while a maintenance window of the asset's site is open.
admin_standing(user, asset) if {
	"admin" in user.roles
	not "vendor" in user.roles
	is_number(asset.purdue_level)
	asset.purdue_level >= 3
}

grant_basis(inp, now) := {"reason": reason, "ends_ns": null} if {
	admin_standing(inp.user, inp.asset)
	reason := sprintf("admin standing access to Purdue level %d asset %s (no grant needed)", [inp.asset.purdue_level, inp.asset.name])
} else := {"reason": reason, "ends_ns": ends} if {
	g = inp.grant
	g.state in ["approved", "active"]
	grant_current(g, now)
	g.requester == inp.user.sub
	window = window_basis(g, inp.asset, now)
	reason = concat("", ["grant ", g.id, " ", g.state, " until ", g.ends_at, window])
	ends = calendar.ns(g.ends_at)
}

grant_current(g, now) if {
	calendar.ns(g.starts_at) <= now
	now < calendar.ns(g.ends_at)
}

window_basis(g, asset, now) := "" if g.maintenance_window_only == false
else := basis if {
	site = data.plant.sites[asset.site]
	windows = calendar.open_windows(site, now)
	count(windows) > 0
	basis = concat("", [", inside maintenance window ", concat(", ", sort(windows)), " (", site.timezone, ")"])
}

grant_checked if {
	is_connection
	not admin_standing(input.user, input.asset)
}

deny contains sprintf("%s to %s needs an approved grant", [input.action.kind, asset_name]) if {
	grant_checked
	not is_object(input.grant)
}

deny contains sprintf("grant %s is %v, not approved or active", [grant_id, state]) if {
	grant_checked
	not input.grant.state in {"approved", "active"}
	state = input.grant.state
}

deny contains sprintf("grant %s is not valid at %v (valid from %v until %v)", [grant_id, now, input.grant.starts_at, input.grant.ends_at]) if {
	grant_checked
	grant_times_valid
	not grant_current(input.grant, checked_now)
	now = input.context.now
}

deny contains sprintf("grant %s was requested by %v, not by %v", [grant_id, requester, sub]) if {
	grant_checked
	not input.grant.requester == input.user.sub
	requester = input.grant.requester
	sub = input.user.sub
}

deny contains sprintf("grant %s is limited to maintenance windows; %v is outside every window of site %v", [grant_id, now, site]) if {
	grant_checked
	input.grant.maintenance_window_only != false
	not window_basis(input.grant, input.asset, checked_now)
	now = input.context.now
	site = input.asset.site
}

# ---- approvals ------------------------------------------------------------------------------

# Approving: a pending request of someone else, not already approved by this user.
approvable(g, user) if {
	g.requester != user.sub
	g.state == "pending"
	not user.sub in g.approvers
}

deny contains "approve needs input.grant (the request to approve)" if {
	input.action.kind == "approve"
	not is_object(input.grant)
}

deny contains "cannot approve your own request" if {
	input.action.kind == "approve"
	input.grant.requester == input.user.sub
}

deny contains sprintf("grant %s is %v; only pending requests can be approved", [grant_id, input.grant.state]) if {
	input.action.kind == "approve"
	input.grant.state != "pending"
}

deny contains sprintf("%v already approved grant %s", [input.user.sub, grant_id]) if {
	input.action.kind == "approve"
	input.user.sub in input.grant.approvers
}
