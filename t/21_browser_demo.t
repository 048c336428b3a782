# The demo page in a real browser: Debian's Chromium, driven by playwright-core, loads the page
# scripts/run.sh serves (conf/html/index.html), its EventSource opens, and events published with
# its form appear on it, named and unnamed, multi-line data intact.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use SSETest;

my $html = "$SSETest::REPO/conf/html";
my $t = SSETest->new(server => <<"CONF")->start;
        location = /events {
            sse_subscribe \$arg_topics;
            sse_retry 3s;
        }
        location = /internal/publish {
            allow 127.0.0.1; deny all;
            sse_publish \$arg_topic;
        }
        location / {
            root $html;
        }
CONF

my $out = `node $FindBin::Bin/browser/demo_page.js http://127.0.0.1:@{[ $t->port ]}/ 2>&1`;
is($? >> 8, 0, 'the page opened its stream') or diag $out;
my ($line) = $out =~ /^(\{.*\})$/m;
my $r = eval { decode_json($line // '') } // {};
is_deeply($r->{errors}, [], 'no error on the page') or diag $out;
is($r->{state}, 'open', 'the stream is still open');
like($r->{answer} // '', qr/^202 \{"id":"(\d+)","events":1,"subscribers":1\}\n$/, 'the form shows the 202 answer');
my ($first) = ($r->{answer} // '') =~ /"id":"(\d+)"/;
is(scalar @{ $r->{log} || [] }, 2, 'two events shown');
is($r->{log}[1], "#$first wallet.created: {\"id\":7}", 'the named event, with its id');
like($r->{log}[0] // '', qr/^#(\d+) message: line one\nline two$/, 'the unnamed multi-line event, newest first');
my ($second) = ($r->{log}[0] // '') =~ /^#(\d+)/;
cmp_ok($second // 0, '>', $first // 0, 'ids increase');

$t->finish;
done_testing;
