"""HTTP routes, one module per audience: browsers (redirect), merchants' backends and staff
(management API), operators (ops)."""
