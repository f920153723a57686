# The OT operation table: operation classes and what each may do on the wire.
#
# Classes are ordered read_only < tune < program < firmware. Modbus/TCP function codes follow
# docs/policy.md ("OT operations"); FC 43 is allowed for MEI type 14 (read device
# identification) only, which the Modbus inspector enforces.
package conduit.ot

import rego.v1

modbus_read := [1, 2, 3, 4, 7, 11, 12, 17, 20, 24, 43]

# Register/coil writes, each confined to the write_ranges obligation.
modbus_register_write := [5, 6, 15, 16, 22, 23]

# FC 21 writes file records, which no register range can confine: program and up only.
modbus_file_write := [21]

modbus_diagnostics := [8]

modbus_umas := [90]

modbus_firmware := [125, 126]

full_range := [[0, 65535]]

# Function code lists are spelled out (not concatenated) so a decision does no list building.
classes := {
	"read_only": {
		"rank": 0,
		"approvals_required": 1,
		"max_duration_s": 28800,
		"idle_timeout_s": 900,
		"supervise": false,
		"require_mfa": false,
		"modbus_function_codes": [1, 2, 3, 4, 7, 11, 12, 17, 20, 24, 43],
	},
	"tune": {
		"rank": 1,
		"approvals_required": 1,
		"max_duration_s": 14400,
		"idle_timeout_s": 900,
		"supervise": false,
		"require_mfa": false,
		"modbus_function_codes": [1, 2, 3, 4, 5, 6, 7, 11, 12, 15, 16, 17, 20, 22, 23, 24, 43],
	},
	"program": {
		"rank": 2,
		"approvals_required": 2,
		"max_duration_s": 7200,
		"idle_timeout_s": 300,
		"supervise": true,
		"require_mfa": true,
		"modbus_function_codes": [1, 2, 3, 4, 5, 6, 7, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43, 90],
	},
	"firmware": {
		"rank": 3,
		"approvals_required": 2,
		"max_duration_s": 3600,
		"idle_timeout_s": 300,
		"supervise": true,
		"require_mfa": true,
		"modbus_function_codes": [1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43, 90, 125, 126],
	},
}

# write_ranges(class, asset_entry): the register ranges a class may write.
# read_only: none; tune: the asset's tune_write_ranges (well-formed entries only, so none
# when unset); program and firmware: the whole address space.
write_ranges("read_only", _) := []

write_ranges("tune", asset) := [r | some r in tune_ranges(asset); valid_range(r)]

default tune_ranges(_) := []

tune_ranges(asset) := asset.tune_write_ranges if is_array(asset.tune_write_ranges)

write_ranges("program", _) := full_range

write_ranges("firmware", _) := full_range

valid_range(r) if {
	is_array(r)
	count(r) == 2
	is_number(r[0])
	is_number(r[1])
	r[0] == floor(r[0])
	r[1] == floor(r[1])
	0 <= r[0]
	r[0] <= r[1]
	r[1] <= 65535
}
