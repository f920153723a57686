# Tests of the default access policy: one or more per rule, both allow and deny sides.
#
# Convention: tests live in package <package>_test next to the code (here conduit.access_test
# in conduit/access/access_test.rego), import the package under test, and are rules named
# test_<rule>_<case> that evaluate to true. Run them with `conduit policy test policies/bundle`.
package conduit.access_test

import rego.v1

import data.conduit.access

# ---- fixtures: vendor Alice, ssh, read-only, plc-press-3 (level 1, critical), grant g-1 ---------

now := "2025-03-04T21:30:00Z" # a Tuesday, 22:30 in Europe/Berlin

base := {
	"user": {
		"sub": "vendor-alice", "email": "alice@acme.example", "name": "Alice",
		"groups": ["vendors"], "roles": ["vendor"], "amr": ["pwd", "mfa"], "acr": null,
		"idp": "corp", "vendor_org": "acme-automation",
	},
	"asset": {
		"name": "plc-press-3", "site": "Riverside Plant", "zone": "press-line-control",
		"purdue_level": 1, "criticality": "critical", "owner_group": "ot-press-line",
		"labels": {}, "protocols": ["modbus", "ssh"],
		"endpoints": [
			{"name": "ssh", "host": "10.0.1.5", "port": 22, "protocol": "ssh", "inspected": false,
			 "settings": {"logins": {"read_only": ["maint"], "tune": ["maint"], "program": ["maint", "root"], "firmware": ["maint", "root"]}}},
			{"name": "plc", "host": "10.0.1.5", "port": 502, "protocol": "modbus", "inspected": true,
			 "settings": {"unit_ids": [1], "write_ranges": {"tune": [{"table": "holding_registers", "first": 40001, "last": 40100}]}}},
		],
	},
	"action": {"kind": "ssh", "port": 22, "ports": [22, 502], "operation_class": "read_only", "login": "maint"},
	"grant": {
		"id": "g-1", "requester": "vendor-alice", "approvers": ["owner-olga"],
		"starts_at": "2025-03-04T20:30:00Z", "ends_at": "2025-03-04T23:30:00Z",
		"ticket": "CHG-1042", "state": "approved", "maintenance_window_only": false,
		"operation_class": "read_only", "ports": [22, 502], "login": "maint",
	},
	"context": {"now": now, "source_ip": "127.0.0.1", "agent_online": true, "plant_state": null},
}

plant := {
	"sites": {
		"Riverside Plant": {
			"timezone": "Europe/Berlin",
			"maintenance_windows": [{"days": ["tue"], "start": "22:00", "end": "02:00"}],
		},
		"Lakeside Works": {"timezone": "America/Chicago", "maintenance_windows": []},
	},
	"assets": {"plc-press-3": {"site": "Riverside Plant", "tune_write_ranges": [[40001, 40100]]}},
	"vendor_orgs": {
		"acme-automation": {"contracts": [{
			"site": "Riverside Plant", "asset": null, "reference": "SVC-1",
			"valid_from": "2025-01-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z",
		}]},
		"globex": {"contracts": [{
			"site": "Lakeside Works", "asset": null, "reference": "SVC-9",
			"valid_from": "2025-01-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z",
		}]},
	},
	"lockout": {"vendors": false, "reason": ""},
}

admin := {"sub": "admin-ada", "roles": ["admin"], "vendor_org": null, "groups": ["ot-admins"]}

approver := {"sub": "owner-olga", "roles": ["approver"], "vendor_org": null, "groups": ["ot-press-line"]}

# given(patch): the base input deep-merged with patch (objects merge, other values replace).
given(patch) := object.union(base, patch)

decide(inp) := d if {
	d := access.decision with input as inp with data.plant as plant
}

decide_plant(inp, p) := d if {
	d := access.decision with input as inp with data.plant as p
}

# allowed / denied also check the invariant: allow exactly when no deny rule fires.
allowed(inp) if {
	d := decide(inp)
	d.allow == true
	count(access.deny) == 0 with input as inp with data.plant as plant
}

denied(inp, reason) if {
	d := decide(inp)
	d.allow == false
	reason in d.reasons
	d.reasons == sort(access.deny) with input as inp with data.plant as plant
}

contract(fields) := object.union({
	"site": "Riverside Plant", "asset": null, "reference": "SVC-2",
	"valid_from": "2025-01-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z",
}, fields)

with_contracts(cs) := json.patch(plant, [{"op": "replace", "path": "/vendor_orgs/acme-automation/contracts", "value": cs}])

# ---- the decision document -----------------------------------------------------------------

test_decision_allows_the_default_vendor_connection if {
	d := decide(base)
	d.allow == true
	d.reasons == [
		"MFA present (amr mfa)",
		"agent for plc-press-3 is online",
		"endpoint ssh 10.0.1.5:22 (ssh) of plc-press-3",
		"grant g-1 approved until 2025-03-04T23:30:00Z",
		"role vendor may ssh",
		"vendor contract SVC-1 covers plc-press-3",
	]
}

test_decision_is_defined_for_an_empty_input if {
	d := access.decision with input as {} with data.plant as plant
	d.allow == false
	d.reasons == ["input.action is missing", "input.asset is missing", "input.context is missing", "input.user is missing"]
	d.obligations.max_duration_s == null
}

test_decision_is_defined_without_data if {
	d := access.decision with input as base with data.plant as {}
	d.allow == false
	"emergency lockout assumed: data.plant.lockout.vendors is not set" in d.reasons
}

# Ill-typed fields deny with their reasons; they are never an evaluation error.
test_decision_amr_not_a_list_denies if {
	denied(given({"user": {"amr": "mfa"}}), "input.user.amr must be a list of strings")
	denied(given({"user": {"amr": "mfa"}}), "ssh to plc-press-3 needs MFA: input.user.amr has none of mfa, otp, hwk")
}

test_decision_asset_name_not_a_string_denies if {
	denied(given({"asset": {"name": 3}}), "input.asset.name must be a non-empty string")
	d := decide(given({"asset": {"name": 3}, "action": {"kind": "request"}}))
	d.reasons == ["input.asset.name must be a non-empty string"]
}

test_deny_lists_every_applicable_reason if {
	d := decide(given({"context": {"agent_online": false}, "grant": {"state": "revoked"}}))
	d.allow == false
	d.reasons == ["agent for plc-press-3 is offline", "grant g-1 is revoked, not approved or active"]
}

test_deny_carries_restrictive_obligations if {
	d := decide(given({"context": {"agent_online": false}}))
	d.obligations == {
		"record": "strict", "max_duration_s": null, "idle_timeout_s": null,
		"approvals_required": 0, "require_mfa": false,
		"modbus": {"allow_function_codes": [], "write_ranges": [], "unit_ids": null},
		"rate_limit_rps": null, "supervise": false, "protocols": {},
	}
}

# ---- malformed input -----------------------------------------------------------------------

test_malformed_missing_user_sub if denied(json.remove(base, ["user/sub"]), "input.user.sub is missing")

test_malformed_empty_user_sub if denied(given({"user": {"sub": ""}}), "input.user.sub must be a non-empty string")

test_malformed_roles_not_a_list if denied(given({"user": {"roles": "vendor"}}), "input.user.roles must be a list of strings")

test_malformed_vendor_org_type if denied(given({"user": {"vendor_org": 7}}), "input.user.vendor_org must be a string or null")

test_malformed_purdue_level if {
	denied(given({"asset": {"purdue_level": 6}}), "input.asset.purdue_level must be an integer 0-5")
	denied(given({"asset": {"purdue_level": "1"}}), "input.asset.purdue_level must be an integer 0-5")
	denied(given({"asset": {"purdue_level": 1.5}}), "input.asset.purdue_level must be an integer 0-5")
}

test_malformed_criticality if denied(given({"asset": {"criticality": "severe"}}), "input.asset.criticality must be one of low, medium, high, critical")

test_malformed_action_kind if denied(given({"action": {"kind": "telnet"}}), "input.action.kind must be one of ssh, sftp, tcp, web_terminal, request, approve")

test_malformed_operation_class if denied(json.remove(base, ["action/operation_class"]), "input.action.operation_class is missing")

test_malformed_agent_online if denied(given({"context": {"agent_online": "yes"}}), "input.context.agent_online must be true or false")

test_malformed_now if {
	msg := "input.context.now must be an RFC 3339 timestamp like 2025-03-04T21:30:00Z"
	denied(given({"context": {"now": "2025-03-04 21:30:00"}}), msg)
	denied(given({"context": {"now": "2025-02-29T21:30:00Z"}}), msg) # not a leap year
	denied(given({"context": {"now": "2025-04-31T21:30:00Z"}}), msg)
	denied(given({"context": {"now": "2025-03-04T24:00:00Z"}}), msg)
	denied(given({"context": {"now": "2025-03-04T21:30:00"}}), msg) # no offset
	denied(given({"context": {"now": 1741123800}}), msg)
	denied(given({"context": {"now": "2025-03-04T21:30:00Z 2025-03-04T21:30:00Z"}}), msg)
}

test_malformed_grant_not_an_object if denied(given({"grant": "g-1"}), "input.grant must be an object or null")

test_malformed_grant_field if {
	denied(json.remove(base, ["grant/maintenance_window_only"]), "input.grant.maintenance_window_only is missing")
	denied(given({"grant": {"state": "APPROVED"}}), "input.grant.state must be one of pending, approved, active, expired, revoked, denied, cancelled")
	denied(given({"grant": {"ends_at": "soon"}}), "input.grant.ends_at must be an RFC 3339 timestamp like 2025-03-04T21:30:00Z")
}

test_wellformed_timestamps_with_offsets_and_fractions if {
	allowed(given({"context": {"now": "2025-03-04T22:30:00.123456+01:00"}}))
	allowed(given({"context": {"now": "2025-03-04T16:30:00-05:00"}}))
}

# ---- 1. roles ------------------------------------------------------------------------------

test_roles_connection_needs_vendor_or_admin if {
	denied(given({"user": {"roles": []}}), "ssh needs role vendor or admin")
	denied(given({"user": {"roles": ["approver", "security"]}, "action": {"kind": "tcp"}}), "tcp needs role vendor or admin")
}

test_roles_request_needs_vendor_or_admin if {
	denied(given({"user": {"roles": ["security"]}, "action": {"kind": "request"}, "grant": null}), "request needs role vendor or admin")
}

test_roles_admin_may_request_for_themselves if {
	d := decide(given({"user": admin, "action": {"kind": "request"}, "grant": null}))
	d.allow == true
	"role admin may request" in d.reasons
}

test_roles_admin_connects_under_own_grant if {
	allowed(given({"user": admin, "grant": {"requester": "admin-ada"}}))
}

test_roles_approve_needs_approver_or_admin if {
	denied(given({"user": object.union(approver, {"roles": ["vendor"]}), "action": {"kind": "approve"}, "grant": {"state": "pending", "approvers": []}}), "approve needs role approver or admin")
}

test_roles_approver_must_own_the_asset if {
	denied(given({"user": object.union(approver, {"groups": ["ot-packaging"]}), "action": {"kind": "approve"}, "grant": {"state": "pending", "approvers": []}}), "approver is not in owner group ot-press-line of plc-press-3")
}

test_roles_approver_in_owner_group_approves if {
	d := decide(given({"user": approver, "action": {"kind": "approve"}, "grant": {"state": "pending", "approvers": []}}))
	d.allow == true
	"approver is in owner group ot-press-line of plc-press-3" in d.reasons
	"approving grant g-1 requested by vendor-alice" in d.reasons
}

test_roles_admin_approves_any_asset if {
	d := decide(given({"user": admin, "action": {"kind": "approve"}, "grant": {"state": "pending", "approvers": []}}))
	d.allow == true
	"role admin may approve any asset (plc-press-3)" in d.reasons
}

# ---- 2. vendor contracts -------------------------------------------------------------------

test_contract_vendor_without_org if denied(given({"user": {"vendor_org": null}}), "vendor user has no vendor_org")

test_contract_of_another_org_does_not_count if {
	denied(given({"user": {"vendor_org": "globex"}}), "no contract of vendor org globex covers plc-press-3")
}

test_contract_naming_the_asset if {
	allowed_with_contracts([contract({"site": null, "asset": "plc-press-3"})])
	allowed_with_contracts([contract({"asset": "plc-press-3"})])
}

test_contract_naming_another_asset_or_site if {
	denied_with_contracts([contract({"site": null, "asset": "hmi-press-3"})], "no contract of vendor org acme-automation covers plc-press-3")
	denied_with_contracts([contract({"site": "Lakeside Works"})], "no contract of vendor org acme-automation covers plc-press-3")
	denied_with_contracts([contract({"site": "Lakeside Works", "asset": "plc-press-3"})], "no contract of vendor org acme-automation covers plc-press-3")
	denied_with_contracts([contract({"site": null, "asset": null})], "no contract of vendor org acme-automation covers plc-press-3")
	denied_with_contracts([], "no contract of vendor org acme-automation covers plc-press-3")
}

test_contract_validity_at_now if {
	allowed_with_contracts([contract({"valid_from": now})])
	denied_with_contracts([contract({"valid_until": now})], "contract SVC-2 of vendor org acme-automation for plc-press-3 is not valid at 2025-03-04T21:30:00Z")
	denied_with_contracts([contract({"valid_from": "2025-03-04T21:30:01Z"})], "contract SVC-2 of vendor org acme-automation for plc-press-3 is not valid at 2025-03-04T21:30:00Z")
}

test_contract_operation_classes if {
	allowed_with_contracts([contract({"valid_from": now, "operation_classes": []})])
	allowed_with_contracts([contract({"valid_from": now, "operation_classes": ["read_only", "tune"]})])
	denied_with_contracts([contract({"valid_from": now, "operation_classes": ["firmware"]})], "contract SVC-2 of vendor org acme-automation for plc-press-3 does not allow operation class read_only")
	d := decide_plant(base, with_contracts([
		contract({"valid_from": now, "operation_classes": ["firmware"]}),
		contract({"reference": "SVC-3", "valid_from": now, "operation_classes": ["read_only"]}),
	]))
	"vendor contract SVC-3 covers plc-press-3" in d.reasons
}

test_contract_reasons_name_every_valid_contract if {
	d := decide_plant(base, with_contracts([contract({}), contract({"reference": "SVC-3", "asset": "plc-press-3"})]))
	"vendor contract SVC-2, SVC-3 covers plc-press-3" in d.reasons
}

test_contract_needed_for_requests if {
	denied(given({"user": {"vendor_org": "globex"}, "action": {"kind": "request"}, "grant": null}), "no contract of vendor org globex covers plc-press-3")
}

test_contract_not_needed_for_admins if {
	d := decide_plant(given({"user": admin, "asset": {"purdue_level": 3}, "grant": null}), json.remove(plant, ["vendor_orgs"]))
	d.allow == true
}

allowed_with_contracts(cs) if {
	d := decide_plant(base, with_contracts(cs))
	d.allow == true
}

denied_with_contracts(cs, reason) if {
	d := decide_plant(base, with_contracts(cs))
	d.allow == false
	reason in d.reasons
}

# ---- 3. Purdue levels and MFA --------------------------------------------------------------

level0_reason := "plc-press-3 is at Purdue level 0 (process and field devices): level 0 is never reachable through conduit"

test_purdue_level0_is_never_reachable if {
	denied(given({"asset": {"purdue_level": 0}}), level0_reason)
	denied(given({"asset": {"purdue_level": 0}, "action": {"kind": "request"}, "grant": null}), level0_reason)
	denied(given({"asset": {"purdue_level": 0}, "user": admin, "grant": null}), level0_reason)
	denied(given({"asset": {"purdue_level": 0}, "user": approver, "action": {"kind": "approve"}, "grant": {"state": "pending", "approvers": []}}), level0_reason)
}

test_purdue_level1_2_connections_need_mfa if {
	denied(given({"user": {"amr": ["pwd"]}}), "ssh to plc-press-3 needs MFA: input.user.amr has none of mfa, otp, hwk")
	denied(given({"user": {"amr": ["pwd", "MFA"]}, "asset": {"purdue_level": 2}}), "ssh to plc-press-3 needs MFA: input.user.amr has none of mfa, otp, hwk")
	allowed(given({"user": {"amr": ["otp"]}}))
	allowed(given({"user": {"amr": ["hwk"]}, "asset": {"purdue_level": 2}}))
}

test_purdue_level3_read_only_needs_no_mfa if {
	d := decide(given({"user": {"amr": ["pwd"]}, "asset": {"purdue_level": 3}}))
	d.allow == true
	d.obligations.require_mfa == false
}

test_purdue_program_and_firmware_need_mfa if {
	denied(given({"user": {"amr": ["pwd"]}, "asset": {"purdue_level": 4}, "action": {"operation_class": "program"}}), "ssh to plc-press-3 needs MFA: input.user.amr has none of mfa, otp, hwk")
	denied(given({"user": {"amr": []}, "asset": {"purdue_level": 5}, "action": {"operation_class": "firmware"}}), "ssh to plc-press-3 needs MFA: input.user.amr has none of mfa, otp, hwk")
}

test_purdue_requests_carry_require_mfa if {
	d := decide(given({"user": {"amr": ["pwd"]}, "asset": {"purdue_level": 2}, "action": {"kind": "request"}, "grant": null}))
	d.allow == true
	d.obligations.require_mfa == true
}

test_purdue_admin_level3_needs_no_grant if {
	d := decide(given({"user": admin, "asset": {"purdue_level": 3}, "grant": null}))
	d.allow == true
	"admin standing access to Purdue level 3 asset plc-press-3 (no grant needed)" in d.reasons
}

test_purdue_admin_level1_2_needs_a_grant if {
	denied(given({"user": admin, "asset": {"purdue_level": 2}, "grant": null}), "ssh to plc-press-3 needs an approved grant")
}

test_purdue_vendors_never_have_standing_access if {
	denied(given({"asset": {"purdue_level": 4}, "grant": null}), "ssh to plc-press-3 needs an approved grant")
	denied(given({"user": {"roles": ["vendor", "admin"]}, "asset": {"purdue_level": 4}, "grant": null}), "ssh to plc-press-3 needs an approved grant")
}

# ---- 4. grants -----------------------------------------------------------------------------

test_grant_required_for_every_connection_kind if {
	every kind in ["ssh", "sftp", "tcp", "web_terminal"] {
		denied(given({"action": {"kind": kind}, "grant": null}), sprintf("%s to plc-press-3 needs an approved grant", [kind]))
	}
}

test_grant_state_must_be_approved_or_active if {
	allowed(given({"grant": {"state": "active"}}))
	every state in ["pending", "expired", "revoked", "denied", "cancelled"] {
		denied(given({"grant": {"state": state}}), sprintf("grant g-1 is %s, not approved or active", [state]))
	}
}

test_grant_must_be_current if {
	allowed(given({"grant": {"starts_at": now}}))
	denied(given({"grant": {"starts_at": "2025-03-04T21:30:01Z"}}), "grant g-1 is not valid at 2025-03-04T21:30:00Z (valid from 2025-03-04T21:30:01Z until 2025-03-04T23:30:00Z)")
	denied(given({"grant": {"ends_at": now}}), "grant g-1 is not valid at 2025-03-04T21:30:00Z (valid from 2025-03-04T20:30:00Z until 2025-03-04T21:30:00Z)")
}

test_grant_must_be_the_users_own if {
	denied(given({"grant": {"requester": "vendor-bob"}}), "grant g-1 was requested by vendor-bob, not by vendor-alice")
}

test_grant_maintenance_window_only if {
	w := {"grant": {"maintenance_window_only": true, "starts_at": "2025-03-01T00:00:00Z", "ends_at": "2025-04-30T00:00:00Z"}}
	d := decide(object.union(given(w), {"context": {"now": now}}))
	d.allow == true
	"grant g-1 approved until 2025-04-30T00:00:00Z, inside maintenance window tue 22:00-02:00 (Europe/Berlin)" in d.reasons

	# after midnight: Wednesday 01:59 local, in Tuesday's window
	allowed(object.union(given(w), {"context": {"now": "2025-03-05T00:59:00Z"}}))

	# the end is exclusive; Wednesday evening and Monday night have no window
	outside := "grant g-1 is limited to maintenance windows; %s is outside every window of site Riverside Plant"
	denied(object.union(given(w), {"context": {"now": "2025-03-05T01:00:00Z"}}), sprintf(outside, ["2025-03-05T01:00:00Z"]))
	denied(object.union(given(w), {"context": {"now": "2025-03-04T20:59:00Z"}}), sprintf(outside, ["2025-03-04T20:59:00Z"]))
	denied(object.union(given(w), {"context": {"now": "2025-03-03T23:30:00Z"}}), sprintf(outside, ["2025-03-03T23:30:00Z"]))

	# summer time (CEST, UTC+2): 20:30Z is 22:30 local
	allowed(object.union(given(w), {"context": {"now": "2025-04-01T20:30:00Z"}}))
	denied(object.union(given(w), {"context": {"now": "2025-04-01T19:30:00Z"}}), sprintf(outside, ["2025-04-01T19:30:00Z"]))
}

test_grant_maintenance_window_needs_known_site if {
	inp := given({"grant": {"maintenance_window_only": true}, "asset": {"site": "Nowhere"}})
	denied(inp, "grant g-1 is limited to maintenance windows; 2025-03-04T21:30:00Z is outside every window of site Nowhere")
}

test_grant_ignored_for_admin_standing_access if {
	allowed(given({"user": admin, "asset": {"purdue_level": 3}, "grant": {"state": "expired", "requester": "someone"}}))
}

# ---- 6. emergency lockout ------------------------------------------------------------------

test_lockout_denies_every_vendor_action if {
	locked := object.union(plant, {"lockout": {"vendors": true, "reason": "incident INC-7"}})
	d1 := decide_plant(base, locked)
	d1.allow == false
	"emergency lockout: all vendor access is disabled (incident INC-7)" in d1.reasons
	d2 := decide_plant(given({"action": {"kind": "request"}, "grant": null}), locked)
	d2.allow == false
	startswith(d2.reasons[0], "emergency lockout")
}

test_lockout_without_reason if {
	d := decide_plant(base, object.union(plant, {"lockout": {"vendors": true, "reason": ""}}))
	d.reasons == ["emergency lockout: all vendor access is disabled"]
}

test_lockout_assumed_when_flag_missing if {
	d := decide_plant(base, json.remove(plant, ["lockout"]))
	d.reasons == ["emergency lockout assumed: data.plant.lockout.vendors is not set"]
}

test_lockout_spares_non_vendors if {
	d := decide_plant(given({"user": admin, "asset": {"purdue_level": 3}, "grant": null}), object.union(plant, {"lockout": {"vendors": true}}))
	d.allow == true
}

# ---- 7. approvals --------------------------------------------------------------------------

test_approve_own_request_denied_even_for_admins if {
	denied(given({"user": approver, "action": {"kind": "approve"}, "grant": {"state": "pending", "requester": "owner-olga", "approvers": []}}), "cannot approve your own request")
	denied(given({"user": admin, "action": {"kind": "approve"}, "grant": {"state": "pending", "requester": "admin-ada", "approvers": []}}), "cannot approve your own request")
}

test_approve_only_pending_requests if {
	denied(given({"user": approver, "action": {"kind": "approve"}, "grant": {"state": "approved", "approvers": []}}), "grant g-1 is approved; only pending requests can be approved")
}

test_approve_only_once if {
	denied(given({"user": approver, "action": {"kind": "approve"}, "grant": {"state": "pending"}}), "owner-olga already approved grant g-1")
}

test_approve_needs_the_request if {
	denied(given({"user": approver, "action": {"kind": "approve"}, "grant": null}), "approve needs input.grant (the request to approve)")
}

# ---- 8. agent ------------------------------------------------------------------------------

test_agent_must_be_online_to_connect if denied(given({"context": {"agent_online": false}}), "agent for plc-press-3 is offline")

test_agent_not_needed_for_requests if {
	allowed(given({"context": {"agent_online": false}, "action": {"kind": "request"}, "grant": null}))
}

# ---- 5. obligations ------------------------------------------------------------------------

test_obligations_read_only_level1 if {
	d := decide(base)
	d.obligations == {
		"record": "strict",
		"max_duration_s": 7200, # the grant ends in 2 h, before the class's 8 h
		"idle_timeout_s": 900,
		"approvals_required": 1,
		"require_mfa": true,
		"modbus": {"allow_function_codes": [1, 2, 3, 4, 7, 11, 12, 17, 20, 24, 43], "write_ranges": [], "unit_ids": null},
		"rate_limit_rps": 10,
		"supervise": false,
		"protocols": {
			"s7": {"allow": ["block_info", "cyclic_read", "read_clock", "read_var", "szl_read"], "write_ranges": []},
			"enip": {"allow": ["read_attribute", "read_tag"]},
		},
	}
}

test_obligations_per_operation_class if {
	req := {"action": {"kind": "request"}, "grant": null, "asset": {"purdue_level": 3, "criticality": "low"}}
	t := decide(given(object.union(req, {"action": {"operation_class": "tune"}}))).obligations
	t.approvals_required == 1
	t.max_duration_s == 14400
	t.idle_timeout_s == 900
	t.supervise == false
	t.require_mfa == false
	t.modbus.write_ranges == [{"table": "holding_registers", "first": 40001, "last": 40100}]
	16 in t.modbus.allow_function_codes
	not 90 in t.modbus.allow_function_codes

	p := decide(given(object.union(req, {"action": {"operation_class": "program"}}))).obligations
	[p.approvals_required, p.max_duration_s, p.idle_timeout_s, p.supervise, p.require_mfa] == [2, 7200, 300, true, true]
	p.modbus.write_ranges == [
		{"table": "coils", "first": 0, "last": 65535},
		{"table": "holding_registers", "first": 0, "last": 65535},
	]
	90 in p.modbus.allow_function_codes
	not 125 in p.modbus.allow_function_codes

	f := decide(given(object.union(req, {"action": {"operation_class": "firmware"}}))).obligations
	[f.approvals_required, f.max_duration_s, f.idle_timeout_s, f.supervise, f.require_mfa] == [2, 3600, 300, true, true]
	every fc in [8, 90, 125, 126] {
		fc in f.modbus.allow_function_codes
	}

	r := decide(given(req)).obligations
	[r.approvals_required, r.max_duration_s, r.supervise, r.modbus.write_ranges] == [1, 28800, false, []]
}

test_obligations_tune_without_ranges_writes_nothing if {
	d := decide_plant(given({"action": {"operation_class": "tune"}}), json.remove(plant, ["assets"]))
	d.allow == true
	d.obligations.modbus.write_ranges == []
}

test_obligations_duration_never_past_grant_end if {
	d := decide(given({"grant": {"ends_at": "2025-03-04T21:30:00.5Z"}}))
	d.obligations.max_duration_s == 1
	e := decide(given({"grant": {"ends_at": "2025-03-05T21:30:00Z"}}))
	e.obligations.max_duration_s == 28800
}

test_obligations_record_mode if {
	decide(given({"asset": {"purdue_level": 2, "criticality": "low"}})).obligations.record == "strict"
	decide(given({"asset": {"purdue_level": 3, "criticality": "high"}})).obligations.record == "strict"
	decide(given({"asset": {"purdue_level": 4, "criticality": "medium"}})).obligations.record == "best_effort"
}

test_obligations_rate_limit if {
	decide(base).obligations.rate_limit_rps == 10
	decide(given({"asset": {"purdue_level": 2}})).obligations.rate_limit_rps == 50
	decide(given({"asset": {"purdue_level": 5}})).obligations.rate_limit_rps == 50
}

# ---- declared endpoints (endpoints.rego) ---------------------------------------------------

modbus_conn := given({"action": {"kind": "tcp", "port": 502, "login": null}})

test_endpoints_connection_to_a_declared_endpoint_of_the_grant if {
	d := decide(modbus_conn)
	d.allow == true
	"endpoint plc 10.0.1.5:502 (modbus) of plc-press-3" in d.reasons
	d.obligations.modbus.unit_ids == [1]
	d.obligations.modbus.write_ranges == [] # read_only
}

test_endpoints_tune_connection_gets_the_endpoint_ranges if {
	d := decide(given({
		"action": {"kind": "tcp", "port": 502, "operation_class": "tune"},
		"grant": {"operation_class": "tune"},
	}))
	d.allow == true
	d.obligations.modbus.write_ranges == [{"table": "holding_registers", "first": 40001, "last": 40100}]
}

s7_endpoint := {
	"name": "cpu", "host": "10.0.1.6", "port": 102, "protocol": "s7", "inspected": true,
	"settings": {"write_ranges": {"tune": [{"area": "DB", "db": 1, "first": 0, "last": 15}]}},
}

s7_conn(op) := given({
	"asset": {"endpoints": array.concat(base.asset.endpoints, [s7_endpoint]), "protocols": ["modbus", "s7", "ssh"]},
	"action": {"kind": "tcp", "port": 102, "login": null, "operation_class": op},
	"grant": {"operation_class": op, "ports": [22, 102, 502]},
})

test_endpoints_s7_connection_gets_its_class_operations_and_ranges if {
	r := decide(s7_conn("read_only"))
	r.allow == true
	r.obligations.protocols.s7 == {"allow": ["block_info", "cyclic_read", "read_clock", "read_var", "szl_read"], "write_ranges": []}
	t := decide(s7_conn("tune"))
	t.allow == true
	t.obligations.protocols.s7.write_ranges == [{"area": "DB", "db": 1, "first": 0, "last": 15}]
	"write_var" in t.obligations.protocols.s7.allow
	not "plc_stop" in t.obligations.protocols.s7.allow
	t.obligations.modbus.write_ranges == [] # not a Modbus connection
}

test_endpoints_enip_allow_list_follows_the_class if {
	decide(base).obligations.protocols.enip.allow == ["read_attribute", "read_tag"]
	t := decide(given({"action": {"operation_class": "tune"}, "grant": {"operation_class": "tune"}}))
	t.obligations.protocols.enip.allow == ["read_attribute", "read_tag", "write_tag"]
}

test_endpoints_undeclared_port_is_denied if {
	denied(given({"action": {"kind": "tcp", "port": 5020}}), "port 5020 is not a declared endpoint of plc-press-3")
}

test_endpoints_port_outside_the_grant_is_denied if {
	denied(given({"action": {"kind": "tcp", "port": 502}, "grant": {"ports": [22]}}), "grant g-1 does not cover port 502 (it allows [22])")
}

test_endpoints_ssh_login_must_be_the_grants if {
	denied(given({"action": {"login": "root"}}), "grant g-1 allows login maint, not root")
	denied(given({"action": {"login": "root"}}), "login root is not declared for read_only on plc-press-3")
}

test_endpoints_ssh_to_a_modbus_endpoint_is_denied if {
	denied(given({"action": {"port": 502}}), "ssh needs an SSH endpoint; port 502 of plc-press-3 speaks modbus")
}

test_endpoints_generic_tcp_is_denied_at_level_1 if {
	denied(given({"action": {"kind": "tcp", "port": 22}}), "ssh at 10.0.1.5:22 speaks ssh, which is not inspected; generic TCP is not allowed for plc-press-3")
	allowed(given({"action": {"kind": "tcp", "port": 22}, "asset": {"labels": {"generic_tcp": "allow"}}}))
}

test_endpoints_generic_tcp_is_allowed_from_level_2_unless_denied if {
	allowed(given({"action": {"kind": "tcp", "port": 22}, "asset": {"purdue_level": 2}}))
	d := decide(given({"action": {"kind": "tcp", "port": 22}, "asset": {"purdue_level": 2, "labels": {"generic_tcp": "deny"}}}))
	d.allow == false
}

request := given({"action": {"kind": "request"}, "grant": null})

test_endpoints_request_names_declared_ports_only if {
	d := decide(request)
	d.allow == true
	"endpoints ssh 10.0.1.5:22, modbus 10.0.1.5:502 declared by plc-press-3, login maint allowed for read_only" in d.reasons
	denied(given({"action": {"kind": "request", "ports": [22, 502, 5900]}, "grant": null}), "port 5900 is not a declared endpoint of plc-press-3")
	denied(given({"action": {"kind": "request", "ports": []}, "grant": null}), "a request must name at least one declared endpoint of plc-press-3")
}

test_endpoints_request_login_must_be_declared_for_the_class if {
	denied(given({"action": {"kind": "request", "login": "root"}, "grant": null}), "login root is not declared for read_only on plc-press-3 (declared: [\"maint\"])")
	allowed(given({"action": {"kind": "request", "login": "root", "operation_class": "program"}, "grant": null}))
	denied(given({"action": {"kind": "request", "ports": [502]}, "grant": null}), "a login applies only to SSH endpoints; the request names none on plc-press-3")
	allowed(given({"action": {"kind": "request", "ports": [502], "login": null}, "grant": null}))
}

test_endpoints_request_for_uninspected_protocol_needs_generic_tcp if {
	vnc := {"name": "vnc", "host": "10.0.1.5", "port": 5900, "protocol": "vnc", "inspected": false, "settings": {}}
	eps := array.concat(base.asset.endpoints, [vnc])
	denied(given({"action": {"kind": "request", "ports": [5900], "login": null}, "asset": {"endpoints": eps}, "grant": null}), "vnc at 10.0.1.5:5900 speaks vnc, which is not inspected; generic TCP is not allowed for plc-press-3")
	allowed(given({"action": {"kind": "request", "ports": [5900], "login": null}, "asset": {"endpoints": eps, "purdue_level": 2}, "grant": null}))
}

test_endpoints_missing_means_nothing_is_declared if {
	denied(given({"asset": {"endpoints": null}}), "port 22 is not a declared endpoint of plc-press-3")
}

test_endpoints_a_grant_without_ports_or_login_covers_nothing if {
	g := json.remove(base.grant, ["ports", "login"])
	inp := object.union(json.remove(base, ["grant"]), {"grant": g})
	d := decide(inp)
	d.allow == false
	"grant g-1 does not cover port 22 (it allows [])" in d.reasons
	"grant g-1 allows login null, not maint" in d.reasons
}
