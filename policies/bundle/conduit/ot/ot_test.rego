# Tests of the OT operation table (package conduit.ot).
package conduit.ot_test

import rego.v1

import data.conduit.ot

test_classes_are_ordered if {
	[ot.class(c).rank | some c in ot.class_names] == [0, 1, 2, 3]
}

test_class_function_codes_follow_the_table if {
	ot.class("read_only").modbus_function_codes == sort(ot.modbus_read)
	ot.class("tune").modbus_function_codes == sort(array.concat(ot.modbus_read, ot.modbus_register_write))
	ot.class("program").modbus_function_codes == sort(array.concat(
		array.concat(ot.modbus_read, ot.modbus_register_write),
		array.concat(ot.modbus_file_write, ot.modbus_umas),
	))
	ot.class("firmware").modbus_function_codes == sort(array.concat(
		array.concat(ot.modbus_read, ot.modbus_register_write),
		array.concat(
			array.concat(ot.modbus_file_write, ot.modbus_diagnostics),
			array.concat(ot.modbus_umas, ot.modbus_firmware),
		),
	))
}

test_each_class_includes_the_lower_ones if {
	every i in numbers.range(1, 3) {
		lower := ot.class(ot.class_names[i - 1])
		higher := ot.class(ot.class_names[i])
		every fc in lower.modbus_function_codes {
			fc in higher.modbus_function_codes
		}
		lower.approvals_required <= higher.approvals_required
		lower.max_duration_s > higher.max_duration_s
	}
}

test_unknown_class_is_undefined if {
	not ot.class("write")
}

test_write_ranges_come_from_the_endpoint_per_table if {
	coils := {"table": "coils", "first": 0, "last": 15}
	regs := {"table": "holding_registers", "first": 10, "last": 30, "unit_ids": [1]}
	plc := {"protocol": "modbus", "settings": {"write_ranges": {"tune": [coils, regs]}}}
	bare := {"protocol": "modbus", "settings": {}}
	ot.write_ranges("read_only", plc) == []
	ot.write_ranges("tune", plc) == [coils, regs]
	ot.write_ranges("tune", bare) == []
	ot.write_ranges("program", plc) == ot.whole_space
	ot.write_ranges("firmware", bare) == ot.whole_space
	{r.table | some r in ot.whole_space} == {"coils", "holding_registers"}
}
