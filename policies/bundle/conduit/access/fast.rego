# The fast path of `decision`: a vendor's connection (ssh, sftp, tcp, web_terminal) with
# well-formed input, decided in two function calls.
#
# fast_facts checks, within that case, everything well_formed checks and evaluates every
# requirement once; fast_decision turns the facts into the same allow (reasons, obligations)
# or deny (the same set of deny reasons) as the general rules. Outside that case fast_facts
# is undefined and the general rules decide. Types are checked by comparison
# ("" < s < [] for a non-empty string, [] <= l < set() for a list), which regorus evaluates
# much faster than is_string/is_array; engines that leave cross-type comparisons undefined
# (rego-cpp) never take the fast path, so the differential test compares it with the general
# rules.
package conduit.access

import rego.v1

import data.conduit.calendar
import data.conduit.ot

fast_facts(inp, u, a, act, ctx, g) := {
	"u": u, "a": a, "g": g, "kind": kind, "op": act.operation_class, "now": now, "now_ns": now_ns,
	"lock": lock, "online": online, "mfa": mfa, "valid": valid, "grant": grant,
} if {
	"" < u.sub
	u.sub < []
	[] <= u.roles
	u.roles < set()
	[] <= u.groups
	u.groups < set()
	[] <= u.amr
	u.amr < set()
	"vendor" in u.roles
	"" < u.vendor_org
	u.vendor_org < []
	lock := [v | some v in [data.plant.lockout.vendors]]
	"" < a.name
	a.name < []
	"" < a.site
	a.site < []
	"" < a.owner_group
	a.owner_group < []
	a.purdue_level in [0, 1, 2, 3, 4, 5]
	a.criticality in ["low", "medium", "high", "critical"]
	kind := act.kind
	kind in ["ssh", "sftp", "tcp", "web_terminal"]
	act.operation_class in ["read_only", "tune", "program", "firmware"]
	online := ctx.agent_online
	online in [true, false]
	now := ctx.now
	"" < now
	now < []
	times = fast_times(g, now)
	calendar.valid_strings(concat(" ", times), count(times))
	now_ns := time.parse_rfc3339_ns(now)
	mfa := fast_mfa(u, a, act.operation_class)
	valid := [c.reference |
		some c in data.plant.vendor_orgs[u.vendor_org].contracts
		covers(c, a)
		time.parse_rfc3339_ns(c.valid_from) <= now_ns
		now_ns < time.parse_rfc3339_ns(c.valid_until)
	]
	grant := fast_grant(g, u, a, now_ns)
}

# fast_times(grant, now): the timestamps to check, for no grant or a well-formed grant.
fast_times(null, now) := [now]

fast_times(g, now) := [now, g.starts_at, g.ends_at] if {
	"" < g.id
	g.id < []
	"" < g.requester
	g.requester < []
	[] <= g.approvers
	g.approvers < set()
	g.state in ["pending", "approved", "active", "expired", "revoked", "denied", "cancelled"]
	g.maintenance_window_only in [true, false]
	"" < g.starts_at
	g.starts_at < []
	"" < g.ends_at
	g.ends_at < []
}

# fast_grant(grant, user, asset, now_ns): the grant facts ("ok": it allows the connection).
fast_grant(null, _, _, _) := {"ok": false}

fast_grant(g, u, a, now_ns) := {
	"ok": all_ok,
	"state_ok": state_ok, "current": current, "own": own, "window": window,
	"ends_ns": ends_ns,
} if {
	g != null
	state_ok := g.state in ["approved", "active"]
	ends_ns := time.parse_rfc3339_ns(g.ends_at)
	current := [time.parse_rfc3339_ns(g.starts_at) <= now_ns, now_ns < ends_ns] == [true, true]
	own := g.requester == u.sub
	window := fast_window(g.maintenance_window_only, g, a, now_ns)
	all_ok := [state_ok, current, own, count(window) > 0] == [true, true, true, true]
}

# fast_mfa(user, asset, operation class): [mfa_basis(...)], or [] where it is undefined.
fast_mfa(u, a, op) := [basis] if {
	basis = mfa_basis(u, a, op)
} else := []

# fast_window(maintenance_window_only, grant, asset, now_ns): [window_basis(...)], or [].
fast_window(false, _, _, _) := [""]

fast_window(true, g, a, now_ns) := [basis] if {
	basis = window_basis(g, a, now_ns)
} else := []

fast_decision(f) := {
	"allow": true,
	"reasons": sort([r | some r in [
		concat("", ["role vendor may ", f.kind]),
		concat("", ["vendor contract ", concat(", ", f.valid), " covers ", f.a.name]),
		f.mfa[0],
		concat("", ["grant ", f.g.id, " ", f.g.state, " until ", f.g.ends_at, f.grant.window[0]]),
		concat("", ["agent for ", f.a.name, " is online"]),
	]; r != ""]),
	"obligations": {
		"record": level[0],
		"max_duration_s": min([c.max_duration_s, ceil((f.grant.ends_ns - f.now_ns) / 1000000000)]),
		"idle_timeout_s": c.idle_timeout_s,
		"approvals_required": c.approvals_required,
		"require_mfa": level[1],
		"modbus": {
			"allow_function_codes": c.modbus_function_codes,
			"write_ranges": ot.write_ranges(f.op, f.a.name),
		},
		"rate_limit_rps": level[2],
		"supervise": c.supervise,
	},
} if {
	f.lock == [false]
	f.a.purdue_level != 0
	count(f.valid) > 0
	count(f.mfa) > 0
	f.online == true
	f.grant.ok == true
	c := ot.class(f.op)
	level := fast_level(f.a.purdue_level, f.a.criticality, c.require_mfa)
} else := {"allow": false, "reasons": reasons, "obligations": denied_obligations} if {
	all := fast_deny_reasons(f)
	count(all) > 0
	reasons := sort(all)
}

# fast_level(level, criticality, class require_mfa): [record, require_mfa, rate_limit_rps] of
# granted_obligations (obligations.rego) for Purdue level 1-5.
fast_level(1, _, _) := ["strict", true, 10]

fast_level(2, _, _) := ["strict", true, 50]

fast_level(level, criticality, class_mfa) := [record_mode(level, criticality), class_mfa, 50] if level >= 3

# The deny reasons of the general rules (access.rego), for the fast path's case.
fast_deny_reasons(f) := {r |
	some r in array.concat(
		array.concat(fast_lock_reason(f.lock), fast_level_reason(f.a)),
		array.concat(fast_contract_reasons(f), fast_grant_reasons(f)),
	)
} | {r |
	f.online == false
	r := sprintf("agent for %s is offline", [f.a.name])
} | {r |
	count(f.mfa) == 0
	r := sprintf("%s to %s needs MFA: input.user.amr has none of mfa, otp, hwk", [f.kind, f.a.name])
}

# fast_lock_reason([data.plant.lockout.vendors] or [] where undefined)
fast_lock_reason(lock) := [] if {
	lock == [false]
} else := [lockout_reason(object.get(data.plant.lockout, "reason", ""))] if {
	lock == [true]
} else := ["emergency lockout assumed: data.plant.lockout.vendors is not set"]

fast_level_reason(a) := [sprintf("%s is at Purdue level 0 (process and field devices): level 0 is never reachable through conduit", [a.name])] if {
	a.purdue_level == 0
} else := []

fast_contract_reasons(f) := [] if {
	count(f.valid) > 0
} else := fast_contract_reason(f, {ref |
	some c in data.plant.vendor_orgs[f.u.vendor_org].contracts
	covers(c, f.a)
	ref = c.reference
})

fast_contract_reason(f, covering) := [sprintf("no contract of vendor org %s covers %s", [f.u.vendor_org, f.a.name])] if {
	count(covering) == 0
} else := [concat("", ["contract ", concat(", ", sort(covering)), sprintf(" of vendor org %s for %s is not valid at %s", [f.u.vendor_org, f.a.name, f.now])])]

fast_grant_reasons(f) := [sprintf("%s to %s needs an approved grant", [f.kind, f.a.name])] if {
	f.g == null
} else := [r |
	some x in [
		[f.grant.state_ok, sprintf("grant %s is %v, not approved or active", [f.g.id, f.g.state])],
		[f.grant.current, sprintf("grant %s is not valid at %v (valid from %v until %v)", [f.g.id, f.now, f.g.starts_at, f.g.ends_at])],
		[f.grant.own, sprintf("grant %s was requested by %v, not by %v", [f.g.id, f.g.requester, f.u.sub])],
		[count(f.grant.window) > 0, sprintf("grant %s is limited to maintenance windows; %v is outside every window of site %v", [f.g.id, f.now, f.a.site])],
	]
	x[0] == false
	r := x[1]
]
