module lpm.local/memhold

go 1.22
