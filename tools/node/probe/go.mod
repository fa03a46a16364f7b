module crmessenger.io/tools/node/probe

go 1.26.0
