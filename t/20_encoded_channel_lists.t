# Channel lists arrive URL-encoded from browsers (encodeURIComponent, URLSearchParams send ','
# as %2C): both locations decode them. An escape that leaves a bad character is still a 400.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

my $t = SSETest->new(server => <<'CONF')->start;
        location = /events { sse_subscribe $arg_topics; }
        location = /pub { sse_publish $arg_topic; }
CONF

my $s = $t->subscribe('/events?topics=wallets%2Cusers');
is($s->status, 200, 'a %2C-separated list subscribes');
my $a = $t->subscribe('/events?topics=%77allets');
is($a->status, 200, 'an escaped letter decodes');

my $r = $t->publish('/pub?topic=users%2C+wallets', 'both');
is($r->{subscribers}, 3, 'publish to "users, wallets" reaches the three subscriptions');
my @ev = $s->events(1);
is(scalar @ev, 1, 'the stream on both channels gets the event once');
is($ev[0]{frame}, "id: $r->{id}\ndata: both\n\n", 'exact bytes');
@ev = $a->events(1);
is($ev[0]{data}, 'both', 'the stream subscribed as %77allets gets it');

is_deeply($t->get_json('/pub?topic=wallets'),
          {channel => 'wallets', subscribers => 2, last_event_id => $r->{id}, events_published => 1,
           retained => 1, oldest_id => $r->{id}, newest_id => $r->{id}},
          'the decoded name is the channel');

for my $bad (['a%20b', 'invalid channel name "a b": use 1-128 of A-Z a-z 0-9 _ - . : @ /'],
             ['a%zz', 'invalid channel name "a%zz": use 1-128 of A-Z a-z 0-9 _ - . : @ /'],
             ['%2C%2C', 'no channel given']) {
    my $resp = $t->request('GET', "/events?topics=$bad->[0]");
    is($resp->{status}, 400, "subscribe to $bad->[0]: 400");
    is($resp->{body}, "$bad->[1]\n", "subscribe to $bad->[0]: reason");
    $resp = $t->request('POST', "/pub?topic=$bad->[0]", body => 'x');
    is($resp->{status}, 400, "publish to $bad->[0]: 400");
}

$t->finish;
done_testing;
