module crmessenger.io/tools/node/pause

go 1.26.0
