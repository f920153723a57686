# Declared endpoints: a request names only endpoints the asset declares, a connection reaches
# only a declared endpoint its grant covers, with the grant's login, and an endpoint whose
# protocol the broker does not inspect passes as generic TCP only where the asset allows it.
#
# input.asset.endpoints: [{name, host, port, protocol, inspected, settings}] (inventory, built
# by the broker from the plant model); input.action.ports (request, approve): the ports the
# request names; input.action.port / input.action.protocol (connections): the one endpoint;
# input.grant.ports / input.grant.login: what the grant allows.
package conduit.access

import rego.v1

endpoints_of(asset) := eps if {
	eps = asset.endpoints
	is_array(eps)
} else := []

# The declared endpoints on a port (several only when hosts differ).
endpoints_on(asset, port) := [e | some e in endpoints_of(asset); e.port == port]

# The SSH logins the asset declares for an operation class (a sorted list, maybe empty).
declared_logins(asset, op) := sort({l |
	some e in endpoints_of(asset)
	e.protocol == "ssh"
	some l in object.get(object.get(object.get(e, "settings", {}), "logins", {}), op, [])
})

# Generic TCP (no inspector on the wire): at Purdue level 2 and above unless the asset's label
# generic_tcp is "deny"; below only when the label says "allow".
generic_tcp_allowed(asset) if object.get(asset.labels, "generic_tcp", "") == "allow"

generic_tcp_allowed(asset) if {
	asset.purdue_level >= 2
	object.get(asset.labels, "generic_tcp", "") != "deny"
}

passes(asset, e) if e.inspected == true

passes(asset, e) if generic_tcp_allowed(asset)

requested_ports(inp) := ports if {
	ports = inp.action.ports
	is_array(ports)
} else := []

requested_endpoints(inp) := [e | some e in endpoints_of(inp.asset); e.port in requested_ports(inp)]

# ---- requests and approvals -----------------------------------------------------------------

scope_basis(inp) := reason if {
	ports := requested_ports(inp)
	count(ports) > 0
	every p in ports {
		count(endpoints_on(inp.asset, p)) > 0
	}
	eps := requested_endpoints(inp)
	every e in eps {
		passes_or_ssh(inp.asset, e)
	}
	login = request_login_basis(inp, eps)
	listed := concat(", ", [sprintf("%s %s:%d", [e.protocol, e.host, e.port]) | some e in eps])
	reason := concat("", ["endpoints ", listed, " declared by ", inp.asset.name, login])
}

passes_or_ssh(_, e) if e.protocol == "ssh"

passes_or_ssh(asset, e) if passes(asset, e)

request_login_basis(inp, eps) := "" if {
	not "ssh" in {e.protocol | some e in eps}
	object.get(inp.action, "login", null) == null
} else := basis if {
	"ssh" in {e.protocol | some e in eps}
	login = inp.action.login
	login in declared_logins(inp.asset, inp.action.operation_class)
	basis := sprintf(", login %s allowed for %s", [login, inp.action.operation_class])
}

is_scoped if input.action.kind in ["request", "approve"]

deny contains sprintf("a request must name at least one declared endpoint of %s", [asset_name]) if {
	is_scoped
	count(requested_ports(input)) == 0
}

deny contains sprintf("port %v is not a declared endpoint of %s", [p, asset_name]) if {
	is_scoped
	some p in requested_ports(input)
	count(endpoints_on(input.asset, p)) == 0
}

deny contains sprintf("%s at %s:%d speaks %s, which is not inspected; generic TCP is not allowed for %s", [e.name, e.host, e.port, e.protocol, asset_name]) if {
	is_scoped
	some e in requested_endpoints(input)
	not passes_or_ssh(input.asset, e)
}

deny contains sprintf("login %v is not declared for %s on %s (declared: %v)", [login, op, asset_name, declared]) if {
	is_scoped
	"ssh" in {e.protocol | some e in requested_endpoints(input)}
	login := object.get(input.action, "login", null)
	op := input.action.operation_class
	declared := declared_logins(input.asset, op)
	not login in declared
}

deny contains sprintf("a login applies only to SSH endpoints; the request names none on %s", [asset_name]) if {
	is_scoped
	not "ssh" in {e.protocol | some e in requested_endpoints(input)}
	object.get(input.action, "login", null) != null
}

# ---- connections ----------------------------------------------------------------------------

connection_endpoint(inp) := eps[0] if {
	eps := endpoints_on(inp.asset, inp.action.port)
	count(eps) > 0
}

endpoint_basis(inp) := reason if {
	e = connection_endpoint(inp)
	grant_covers(inp.grant, e)
	connection_login_ok(inp, e)
	connection_protocol_ok(inp, e)
	reason := sprintf("endpoint %s %s:%d (%s) of %s", [e.name, e.host, e.port, e.protocol, inp.asset.name])
}

grant_covers(null, _) := true

grant_covers(g, e) if {
	g != null
	e.port in g.ports
}

connection_login_ok(inp, _) if not inp.action.kind in ["ssh", "sftp"]

connection_login_ok(inp, e) if {
	inp.action.kind in ["ssh", "sftp"]
	e.protocol == "ssh"
	inp.action.login in declared_logins(inp.asset, inp.action.operation_class)
	login_matches_grant(inp.grant, inp.action.login)
}

login_matches_grant(null, _) := true

login_matches_grant(g, login) if {
	g != null
	g.login == login
}

connection_protocol_ok(inp, _) if inp.action.kind != "tcp"

connection_protocol_ok(inp, e) if {
	inp.action.kind == "tcp"
	passes(inp.asset, e)
}

deny contains sprintf("port %v is not a declared endpoint of %s", [input.action.port, asset_name]) if {
	is_connection
	not connection_endpoint(input)
}

deny contains sprintf("grant %s does not cover port %v (it allows %v)", [grant_id, input.action.port, ports]) if {
	is_connection
	is_object(input.grant)
	ports = object.get(input.grant, "ports", [])
	not input.action.port in ports
}

deny contains sprintf("%s needs an SSH endpoint; port %v of %s speaks %s", [input.action.kind, input.action.port, asset_name, e.protocol]) if {
	input.action.kind in ["ssh", "sftp"]
	e = connection_endpoint(input)
	e.protocol != "ssh"
}

deny contains sprintf("login %v is not declared for %s on %s", [input.action.login, input.action.operation_class, asset_name]) if {
	input.action.kind in ["ssh", "sftp"]
	not input.action.login in declared_logins(input.asset, input.action.operation_class)
}

deny contains sprintf("grant %s allows login %v, not %v", [grant_id, login, input.action.login]) if {
	input.action.kind in ["ssh", "sftp"]
	is_object(input.grant)
	login = object.get(input.grant, "login", null)
	login != input.action.login
}

deny contains sprintf("%s at %s:%d speaks %s, which is not inspected; generic TCP is not allowed for %s", [e.name, e.host, e.port, e.protocol, asset_name]) if {
	input.action.kind == "tcp"
	e = connection_endpoint(input)
	not passes(input.asset, e)
}
